"""The vlseg model: CLIP towers + scale-aware vision-language attention + full-scale decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import FullScaleDecoder, PresenceHead
from .scale_attention import ScaleAwareVLA


@dataclass
class ImageFeatures:
    """Cached output of the image encoder.

    Attributes:
        maps: 4 maps at strides 4/8/16/32 projected to the decoder width (B x C x H_i x W_i).
        embedding: B x E CLIP image embedding (not normalised).
        prepared: per scale, the text-independent half of the fusion block (context, queries).
        zeroshot: B x E embedding of the zero-shot head (``VLSegModel.zeroshot_head``), or None
            when the model has none (zero-shot then uses ``embedding``).
    """

    maps: list[torch.Tensor]
    embedding: torch.Tensor
    prepared: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    zeroshot: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> ImageFeatures:
        """Gather rows (e.g. repeat one image for several prompts)."""
        prepared = (
            None if self.prepared is None else [(c[index], q[index]) for c, q in self.prepared]
        )
        zeroshot = None if self.zeroshot is None else self.zeroshot[index]
        return ImageFeatures(
            [m[index] for m in self.maps], self.embedding[index], prepared, zeroshot
        )

    @classmethod
    def concat(cls, parts: list[ImageFeatures]) -> ImageFeatures:
        """Stack the rows of several feature sets (same map shapes) into one."""
        maps = [torch.cat(scale) for scale in zip(*(f.maps for f in parts), strict=True)]
        prepared = None
        if all(f.prepared is not None for f in parts):
            prepared = [
                (torch.cat([c for c, _ in scale]), torch.cat([q for _, q in scale]))
                for scale in zip(*(f.prepared for f in parts), strict=True)
            ]
        zeroshot = None
        if all(f.zeroshot is not None for f in parts):
            zeroshot = torch.cat([f.zeroshot for f in parts])
        return cls(maps, torch.cat([f.embedding for f in parts]), prepared, zeroshot)


@dataclass
class TextFeatures:
    """Encoded referring expressions: words B x T x D, mask B x T, embedding B x E."""

    words: torch.Tensor
    mask: torch.Tensor
    embedding: torch.Tensor


class VLSegModel(nn.Module):
    """Referring segmentation over open_clip towers.

    Args:
        vision: a ``VisionEncoder`` (multi-scale maps + CLIP embedding).
        text: a ``TextEncoder`` (token features + CLIP embedding).
        logit_scale: CLIP temperature (log scale) for the contrastive term.
        dim: fusion/decoder width.
        kernel_sizes: multi-kernel context sizes.
        num_heads: cross-attention heads.
        sentence_token: also offer the sentence embedding to cross-attention as a key/value
            token, so that a prompt whose words are unfamiliar can still be grounded through
            the text tower's sentence-level semantics.

    Attributes:
        word_dropout, sentence_only: training-time regularisers (set by the engine): the
            probability of hiding each word from cross-attention, and of hiding all of a
            prompt's words (only with ``sentence_token``).
        prompter: an optional prompt learner (``prompts.PromptLearner``: CoOp, CoCoOp, VPT,
            MaPLe), None by default. Attached with ``attach_prompter``; its parameters then
            appear under ``prompter.`` in the state dict (the base keys never change).
    """

    def __init__(
        self,
        *,
        vision: nn.Module,
        text: nn.Module,
        logit_scale: nn.Parameter,
        dim: int,
        kernel_sizes: list[int],
        num_heads: int,
        sentence_token: bool = False,
    ):
        super().__init__()
        self.sentence_token = sentence_token
        self.word_dropout = 0.0
        self.sentence_only = 0.0
        self.vision = vision
        self.text = text
        self.logit_scale = logit_scale
        self.in_proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in vision.out_channels)
        self.word_proj = nn.Sequential(nn.LayerNorm(text.width), nn.Linear(text.width, dim))
        self.sent_proj = nn.Sequential(nn.LayerNorm(text.embed_dim), nn.Linear(text.embed_dim, dim))
        self.fusion = nn.ModuleList(
            ScaleAwareVLA(dim=dim, kernel_sizes=kernel_sizes, num_heads=num_heads)
            for _ in vision.out_channels
        )
        self.decoder = FullScaleDecoder(dim=dim, levels=len(vision.out_channels))
        self.presence = PresenceHead(dim=dim)
        self.prompter: nn.Module | None = None
        self.zeroshot_head: nn.Module | None = None

    def add_zeroshot_head(self) -> nn.Module:
        """Give the model a second image-embedding head, used only by zero-shot classification.

        A copy of the vision tower's own head (same architecture, same weights until trained,
        e.g. by ``vlseg align target=zeroshot_head``), computed on the same input in every
        image encoding. Its weights are frozen here (they train only in ``vlseg align``) and
        saved under ``zeroshot_head.`` (in ``zeroshot.safetensors``); retrieval, prompt
        learners and the contrastive term keep using the tower's head. Only towers with a
        separate embedding head (timm) have one.
        """
        import copy

        head = getattr(self.vision.visual, "head", None)
        timm = self.vision.tower_kind in ("timm_cnn", "timm_vit")
        if not (timm and isinstance(head, nn.Module)):
            raise ValueError(
                "zeroshot_head needs a vision tower with a separate embedding head (timm "
                f"towers); this one is {self.vision.tower_kind}"
            )
        self.zeroshot_head = copy.deepcopy(head)
        self.zeroshot_head.requires_grad_(False)
        return self.zeroshot_head

    def attach_prompter(self, prompter: nn.Module | None) -> None:
        """Route text and image encoding through a prompt learner (None detaches it).

        The learner provides ``text_prompt(batch, image_embedding) -> dict`` (keyword arguments
        of ``TextEncoder.forward``: ``ctx``, ``deep_ctx``) and ``vision_prompt(batch) -> dict``
        (of ``VisionEncoder.forward``: ``prompt``, ``deep_prompt``).
        """
        if prompter is None:
            self._modules.pop("prompter", None)
            self.prompter = None
        else:
            self.prompter = prompter

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """B x 3 x H x W normalised images -> cached features."""
        kw = {} if self.prompter is None else self.prompter.vision_prompt(images.shape[0])
        out = self.vision(images, **kw)
        maps = [p(f) for p, f in zip(self.in_proj, out["features"], strict=True)]
        # The text-independent half of each fusion block is computed once per image.
        prepared = [blk.prepare(m) for blk, m in zip(self.fusion, maps, strict=True)]
        zeroshot = None
        if self.zeroshot_head is not None:
            zeroshot = self.zeroshot_head(out["head_input"])
        return ImageFeatures(maps, out["embedding"], prepared, zeroshot)

    def encode_text(
        self, ids: torch.Tensor, mask: torch.Tensor, image_embedding: torch.Tensor | None = None
    ) -> TextFeatures:
        """Token ids B x T and mask B x T -> word features and sentence embedding.

        ``image_embedding`` (B or 1) x E conditions an image-aware prompt learner (CoCoOp); the
        others ignore it. With a learner, words may hold its context tokens (T grows by n).
        """
        kw = {}
        if self.prompter is not None:
            kw = self.prompter.text_prompt(ids.shape[0], image_embedding)
        out = self.text(ids, mask, **kw)
        return TextFeatures(out["tokens"], out["mask"], out["embedding"])

    def decode(self, image: ImageFeatures, text: TextFeatures) -> dict[str, torch.Tensor]:
        """Segment each (image, text) pair; one image may be shared by B texts.

        Returns:
            dict with ``logits`` (B x 1 x H/4 x W/4), ``aux`` (list of coarser logits) and
            ``presence`` (B).
        """
        b = text.words.shape[0]
        if image.maps[0].shape[0] == 1 and b > 1:
            image = image.select(torch.zeros(b, dtype=torch.long, device=text.words.device))
        if image.maps[0].shape[0] != b:
            raise ValueError(
                f"{image.maps[0].shape[0]} images for {b} texts; pass one image or one per text"
            )
        words = self.word_proj(text.words)
        sentence = self.sent_proj(text.embedding)
        mask = text.mask.bool()
        if self.training and (self.word_dropout > 0 or self.sentence_only > 0):
            mask = self._drop_words(mask)
        if self.sentence_token:
            words = torch.cat([sentence[:, None], words], dim=1)
            mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        prepared = image.prepared or [None] * len(image.maps)
        fused = [
            blk(m, words, mask, sentence, prep)
            for blk, m, prep in zip(self.fusion, image.maps, prepared, strict=True)
        ]
        node, logits = self.decoder(fused)
        presence = self.presence(node, logits[0], sentence)
        return {"logits": logits[0], "aux": logits[1:], "presence": presence}

    def _drop_words(self, mask: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(mask.shape, device=mask.device) >= self.word_dropout
        if self.sentence_token and self.sentence_only > 0:
            keep &= torch.rand(mask.shape[0], 1, device=mask.device) >= self.sentence_only
        out = mask & keep
        if not self.sentence_token:  # every prompt keeps at least its first real token
            first = torch.zeros_like(mask)
            first[torch.arange(mask.shape[0]), mask.int().argmax(1)] = True
            out |= first & mask
        return out

    def forward(
        self,
        images: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        caption_ids: torch.Tensor | None = None,
        caption_mask: torch.Tensor | None = None,
    ) -> dict:
        """Full pass. Also returns the CLIP embeddings for the contrastive term; captions, when
        given, are encoded in the same forward (``caption_embedding``)."""
        img = self.encode_image(images)
        txt = self.encode_text(ids, mask, img.embedding)
        # Captions get their own text-tower call, so the short prompts are not padded to the
        # captions' length (a parameter used twice is one gradient for DDP: autograd sums the
        # uses before the gradient is ready).
        cap = None
        if caption_ids is not None:
            cap = self.encode_text(caption_ids, caption_mask, img.embedding)
        out = self.decode(img, txt)
        out["image_embedding"] = img.embedding
        out["text_embedding"] = txt.embedding
        # Read the temperature inside forward so DDP sees the parameter used exactly once.
        out["logit_scale"] = self.logit_scale * 1.0
        if cap is not None:
            out["caption_embedding"] = cap.embedding
        return out


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize B x 1 x h x w logits to ``size``."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
