"""The inference core: ``encode`` an image once, ``decode`` any number of prompts against it,
and turn the raw outputs into answers with one ``postprocess``.

Everything that answers a prompt goes through these three functions: ``Segmenter`` (the Python
API), ``vlseg eval`` (``evaluation.evaluate``), ``vlseg predict`` and the chat. So a threshold,
a calibration or a measurement is defined here once, and an evaluation scores exactly what a
user gets.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .data.io import LoadedImage
from .modeling.vlseg import ImageFeatures, TextFeatures, upsample_logits
from .refine import guide_of, refine_probabilities
from .serving import ServingConfig
from .vocabulary import unfamiliar, ungrounded

VERDICTS = ("present", "absent", "unsure", "out-of-domain")


@dataclass
class EncodedImage:
    """N images after the image encoder: what every follow-up prompt on them reuses.

    Attributes:
        features: the encoder's output, N rows (maps B x C x H_i x W_i, embedding N x E).
        sizes: (H, W) of each image as given, the resolution answers are returned at.
        spacings: pixel spacing (row_mm, col_mm) of each image, or None when unknown.
        images: the loaded images (for display), or None when encoded from tensors.
        ood_scores: each image's out-of-domain score (``vlseg.ood``), or None when the model
            has no out-of-domain fit.
    """

    features: ImageFeatures
    sizes: list[tuple[int, int]]
    spacings: list[tuple[float, float] | None]
    images: list[LoadedImage] | None = None
    ood_scores: list[float] | None = None
    # grey-level guides of the edge-aware refinement, per image row, made on first use
    _guides: dict = field(default_factory=dict, repr=False, compare=False)

    def guide(self, i: int) -> torch.Tensor:
        """Image ``i``'s H x W grey levels in [0, 1] (``vlseg.refine.guide_of``), cached."""
        if i not in self._guides:
            if self.images is None:
                raise ValueError("encoded from tensors: no loaded image to guide the refinement")
            self._guides[i] = guide_of(self.images[i].rgb)
        return self._guides[i]

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> EncodedImage:
        """Image ``i`` alone (its features stay on the same device; no copy of the maps)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"image {i} of an EncodedImage of {len(self)}")
        i = i % len(self)
        index = torch.tensor([i], device=self.features.embedding.device)
        images = None if self.images is None else [self.images[i]]
        ood = None if self.ood_scores is None else [self.ood_scores[i]]
        return EncodedImage(
            self.features.select(index), [self.sizes[i]], [self.spacings[i]], images, ood
        )

    @property
    def embedding(self) -> np.ndarray:
        """L2-normalised CLIP image embeddings, N x E float32 (what zero-shot and retrieval
        compare with text)."""
        emb = F.normalize(self.features.embedding.detach().float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32)

    @property
    def zeroshot_embedding(self) -> np.ndarray:
        """L2-normalised image embeddings for zero-shot classification, N x E float32: the
        model's zero-shot head where it has one (``VLSegModel.zeroshot_head``), else
        :attr:`embedding`."""
        z = self.features.zeroshot
        if z is None:
            return self.embedding
        return F.normalize(z.detach().float(), dim=-1).cpu().numpy().astype(np.float32)

    @property
    def pooled(self) -> np.ndarray:
        """N x (sum of widths) L2-normalised global averages of the multi-scale maps (they
        describe appearance at every scale, where the CLIP embedding keeps only what separates
        the training captions): the ``"means"`` out-of-domain features
        (``vlseg.ood.ood_features``)."""
        from .ood import ood_features

        return ood_features(self.features.maps, "means")


@dataclass
class Decoded:
    """Raw decoder outputs for B (image, text) pairs.

    Attributes:
        logits: B x 1 x h x w mask logits at the decoder's resolution (input size / 4).
        presence: B raw presence logits (before calibration).
        image_index: B, which row of the ``EncodedImage`` each text was answered on.
        texts: the B prompts.
    """

    logits: torch.Tensor
    presence: torch.Tensor
    image_index: list[int]
    texts: list[str]


@dataclass
class SegmentationResult:
    """The answer to one (image, text) prompt.

    Attributes:
        text: the prompt.
        mask: H x W bool at the input image's resolution: the answer when ``verdict`` is
            "present", the tentative one for "unsure" (empty when the score is below the
            threshold), empty for "absent" and "out-of-domain". H x W is the image as shown
            (``vlseg.data.load_image``): for a 2-D NIfTI file that is the radiological display
            of its slice, not the file's voxel order (rows and columns may be swapped or
            flipped relative to the array nibabel returns); 3-D files are answered in their
            own voxel order (``VolumeResult``).
        probs: H x W float32 per-pixel foreground probability in [0, 1].
        score: calibrated presence probability in [0, 1] (is the described thing in the image
            at all).
        verdict: "present", "absent", "unsure" (the calibrated presence is in the checkpoint's
            unsure band, or none of the prompt's content words was in its training prompts;
            ``mask`` is the tentative answer) or "out-of-domain" (the image is unlike the
            model's training images; ``mask`` is empty).
        area_px: foreground pixels of ``mask``.
        area_mm2: area in mm^2 when the pixel spacing is known, else None.
        n_components: connected components (8-connectivity) of ``mask``.
        unfamiliar: words of ``text`` that the model's training prompts never used (empty when
            the model records no vocabulary): the answer may not reflect them.
        uncertainty: H x W float32 in [0, 1], the binary entropy (bits) of ``probs``: 1 where
            a pixel's probability is 0.5, 0 where it is 0 or 1.
        presence_logit: the raw presence logit (before calibration).
        ood_score: the image's out-of-domain score, or None when not known.
        note: why a prompt naming one instance ("the second lesion from the top") got the
            whole finding instead (``vlseg.referring``), e.g. "only one hepatic lesion was
            found"; None otherwise.
    """

    text: str
    mask: np.ndarray
    probs: np.ndarray
    score: float
    verdict: str
    area_px: int
    area_mm2: float | None
    n_components: int
    unfamiliar: list[str] = field(default_factory=list)
    presence_logit: float = float("nan")
    ood_score: float | None = None
    note: str | None = None

    @property
    def uncertainty(self) -> np.ndarray:
        p = np.clip(self.probs.astype(np.float64), 1e-7, 1 - 1e-7)
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        return h.astype(np.float32)

    @property
    def present(self) -> bool:
        """``verdict == "present"``: the thing was found and the mask is not empty."""
        return self.verdict == "present"

    def __repr__(self) -> str:
        where = f"{self.area_px} px" + (f" ({self.area_mm2:.1f} mm^2)" if self.area_mm2 else "")
        verdict = (
            f"present, {where}, {self.n_components} component(s)"
            if self.present
            else ("not found" if self.verdict == "absent" else self.verdict)
        )
        new = f", unfamiliar words: {', '.join(self.unfamiliar)}" if self.unfamiliar else ""
        note = f", note: {self.note}" if self.note else ""
        return f"SegmentationResult({self.text!r}: {verdict}, score={self.score:.3f}{new}{note})"


@torch.no_grad()
def encode(
    model,
    pixels: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    spacings: Sequence[tuple[float, float] | None] | None = None,
    images: list[LoadedImage] | None = None,
    ood=None,
) -> EncodedImage:
    """Run the image encoder once.

    Args:
        model: a ``VLSegModel`` (in eval mode).
        pixels: N x 3 x S x S preprocessed images (``Segmenter.preprocess`` or a dataset).
        sizes: (H, W) of each original image.
        spacings: pixel spacing of each image (None entries or None: unknown).
        ood: an out-of-domain fit (``vlseg.ood.OODDetector``): each image gets its score.
    """
    if len(sizes) != pixels.shape[0]:
        raise ValueError(f"{pixels.shape[0]} images but {len(sizes)} sizes")
    feats = model.encode_image(pixels)
    spacings = list(spacings) if spacings is not None else [None] * len(sizes)
    encoded = EncodedImage(feats, [tuple(map(int, s)) for s in sizes], spacings, images)
    if ood is not None:
        encoded.ood_scores = [float(v) for v in ood.score_maps(feats.maps)]
    return encoded


@torch.no_grad()
def encode_texts(
    model, texts: Sequence[str], image_embedding: torch.Tensor | None = None
) -> TextFeatures:
    """Run the text tower on B prompts (``image_embedding`` conditions CoCoOp-style learners)."""
    device = next(model.parameters()).device
    tok = model.text.tokenize(list(texts))
    feats = model.encode_text(tok["ids"].to(device), tok["mask"].to(device), image_embedding)
    if feats.words.dtype != torch.float32:  # a reduced-precision text tower (``text_dtype``)
        feats = TextFeatures(feats.words.float(), feats.mask, feats.embedding.float())
    return feats


class TextCache:
    """Text features per prompt, least recently used dropped first: a prompt asked again (on
    any image, by any user) costs nothing in the text tower.

    Only for models whose text encoding does not depend on the image (no prompt learner
    attached); a cached prompt's features equal a fresh batch's up to float rounding (the batch
    is padded to another length).

    Args:
        size: prompts kept.
    """

    def __init__(self, size: int = 4096):
        self.size = size
        self.hits = self.misses = 0
        self._rows: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def features(self, model, texts: Sequence[str]) -> TextFeatures:
        """TextFeatures of ``texts`` (B x T x D words, B x T mask, B x E embedding)."""
        with self._lock:
            # copy out the hits now: another thread may evict them before this one is done
            known = {t: self._rows[t] for t in dict.fromkeys(texts) if t in self._rows}
            for t in known:
                self._rows.move_to_end(t)
            missing = [t for t in dict.fromkeys(texts) if t not in known]
            self.hits += len(texts) - sum(texts.count(t) for t in missing)
            self.misses += len(missing)
        if missing:
            out = encode_texts(model, missing)
            for i, t in enumerate(missing):
                n = int(out.mask[i].nonzero().max()) + 1  # through the last real token
                # clones: a view would keep the whole padded batch alive in the cache
                known[t] = (
                    out.words[i, :n].clone(),
                    out.mask[i, :n].clone(),
                    out.embedding[i].clone(),
                )
            with self._lock:
                for t in missing:
                    self._rows[t] = known[t]
                while len(self._rows) > self.size:
                    self._rows.popitem(last=False)
        rows = [known[t] for t in texts]
        length = max(r[0].shape[0] for r in rows)
        words = rows[0][0].new_zeros(len(rows), length, rows[0][0].shape[-1])
        mask = rows[0][1].new_zeros(len(rows), length)
        for i, (w, m, _) in enumerate(rows):
            words[i, : w.shape[0]], mask[i, : m.shape[0]] = w, m
        return TextFeatures(words, mask, torch.stack([r[2] for r in rows]))


@torch.no_grad()
def decode(
    model,
    encoded: EncodedImage,
    texts: Sequence[str],
    image_index: Sequence[int] | None = None,
    *,
    text_cache: TextCache | None = None,
) -> Decoded:
    """Answer B prompts from cached image features (no image-encoder run).

    Args:
        encoded: N encoded images.
        texts: B prompts.
        image_index: B image rows, one per text; default: every text on the single image
            (N == 1) or text i on image i (N == B).
        text_cache: reuse text features of prompts seen before (models without a prompt
            learner only).
    """
    texts = list(texts)
    n, b = len(encoded), len(texts)
    if image_index is None:
        if n not in (1, b):
            raise ValueError(f"{n} images for {b} texts; pass image_index (one row per text)")
        image_index = [0] * b if n == 1 else list(range(b))
    image_index = [int(i) for i in image_index]
    if len(image_index) != b or not all(0 <= i < n for i in image_index):
        raise ValueError(f"image_index must give one row in [0, {n}) per text, got {image_index}")
    device = encoded.features.embedding.device
    feats = encoded.features
    if not (n == 1 or image_index == list(range(n))):
        feats = feats.select(torch.tensor(image_index, device=device))
    if text_cache is not None and getattr(model, "prompter", None) is None:
        txt = text_cache.features(model, texts)
    else:
        txt = encode_texts(model, texts, feats.embedding)
    out = model.decode(feats, txt)
    return Decoded(out["logits"], out["presence"], image_index, texts)


def mask_probabilities(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel probabilities at ``size`` from B x 1 x h x w decoder logits.

    The logits are resized once, straight to the image's own size, and squashed there: a
    sharp logit edge stays sharp (resizing probabilities instead blurs it; on phantom-tiny's
    test split that costs 0.002 Dice).

    Returns:
        B x H x W float32 in [0, 1].
    """
    return torch.sigmoid(upsample_logits(logits.float(), tuple(size)))[:, 0]


def count_components(mask: np.ndarray) -> int:
    """Connected components of a 2-D mask (8-connectivity)."""
    return int(ndimage.label(mask, structure=np.ones((3, 3)))[1]) if mask.any() else 0


def postprocess(
    decoded: Decoded,
    encoded: EncodedImage,
    serving: ServingConfig,
    *,
    size: tuple[int, int] | None = None,
    spacing: tuple[float, float] | None = None,
    vocabulary: Iterable[str] | None = None,
) -> list[SegmentationResult]:
    """Raw outputs -> one ``SegmentationResult`` per prompt.

    Presence: ``sigmoid(calibrate(logit)) >= serving.threshold``. Mask: pixels with probability
    ``> serving.threshold``, only for a present prompt; an empty mask is "absent". The
    probabilities are the decoder's, upsampled to the image and, with ``serving.refine``,
    aligned to the image's edges (``vlseg.refine``; needs the loaded images).

    Args:
        decoded, encoded: from :func:`decode` and :func:`encode`.
        serving: threshold and calibration.
        size: answer at this (H, W) instead of each image's own size (e.g. the input size, to
            score against resized masks during training).
        spacing: pixel spacing overriding the images' own, for mm^2.
        vocabulary: words of the model's training prompts (None: unknown).
    """
    raw = decoded.presence.float()
    scores = torch.sigmoid(serving.calibrate(raw)).cpu().numpy()
    raw = raw.cpu().numpy()
    results: list[SegmentationResult | None] = [None] * len(decoded.texts)
    # Texts answered on the same image share one resize.
    for row in dict.fromkeys(decoded.image_index):
        picks = [j for j, i in enumerate(decoded.image_index) if i == row]
        out_size = size or encoded.sizes[row]
        probs_t = mask_probabilities(decoded.logits[picks], out_size)
        refine = serving.refine is not None and encoded.images is not None
        if refine and tuple(out_size) == tuple(encoded.sizes[row]):
            probs_t = refine_probabilities(
                probs_t, encoded.guide(row), decoded.logits.shape[-2:], serving.refine
            )
        probs = probs_t.cpu().numpy()
        sp = spacing or encoded.spacings[row]
        ood = None if encoded.ood_scores is None else encoded.ood_scores[row]
        for j, p in zip(picks, probs, strict=True):
            results[j] = _result(
                decoded.texts[j], p, float(scores[j]), float(raw[j]), ood, serving, sp, vocabulary
            )
    return results  # type: ignore[return-value]


def _result(text, probs, score, logit, ood, serving, spacing, vocabulary) -> SegmentationResult:
    mask = (probs > serving.threshold) & (score >= serving.threshold)
    new_words = unfamiliar(text, vocabulary)
    verdict = serving.verdict(score, bool(mask.any()), ood, unfamiliar=ungrounded(text, vocabulary))
    if verdict == "out-of-domain":
        mask = np.zeros_like(mask)
    area = int(mask.sum())
    mm2 = area * float(spacing[0]) * float(spacing[1]) if spacing else None
    return SegmentationResult(
        text=text,
        mask=mask,
        probs=probs.astype(np.float32, copy=False),
        score=score,
        verdict=verdict,
        area_px=area,
        area_mm2=mm2,
        n_components=count_components(mask),
        unfamiliar=new_words,
        presence_logit=logit,
        ood_score=ood,
    )


@dataclass
class ClassificationResult:
    """Zero-shot class probabilities for one image.

    Attributes:
        labels: class names, in the order given.
        probs: float32 probabilities (softmax of ``100 * cos``), summing to 1.
        top: the most probable label.
        logits: float64 ``100 * cos`` per label. Rank images by ``ovr_log_odds(logits)``
            (e.g. for AUROC), not by ``probs``: at CLIP's temperature probabilities saturate to
            exactly 0 or 1 and tie.
    """

    labels: list[str]
    probs: np.ndarray
    top: str
    logits: np.ndarray | None = None

    def as_dict(self) -> dict[str, float]:
        return {lab: float(p) for lab, p in zip(self.labels, self.probs, strict=True)}

    def __repr__(self) -> str:
        best = sorted(self.as_dict().items(), key=lambda kv: -kv[1])[:3]
        return "ClassificationResult(" + ", ".join(f"{k}: {v:.3f}" for k, v in best) + ")"


def zero_shot(
    image_embeddings: np.ndarray, class_embeddings: np.ndarray, labels: Sequence[str]
) -> list[ClassificationResult]:
    """open_clip's zero-shot rule: softmax over ``100 * image @ classes.T``.

    Args:
        image_embeddings: N x E L2-normalised image embeddings.
        class_embeddings: C x E L2-normalised class embeddings.
        labels: the C class names.
    """
    emb = np.atleast_2d(image_embeddings).astype(np.float64)
    logits = 100.0 * emb @ class_embeddings.T.astype(np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(1, keepdims=True)
    labels = list(labels)
    return [
        ClassificationResult(labels, p.astype(np.float32), labels[int(np.argmax(lg))], lg)
        for p, lg in zip(probs, logits, strict=True)
    ]


def ovr_log_odds(logits: np.ndarray) -> np.ndarray:
    """One-vs-rest log-odds ``log p_c / (1 - p_c)`` of softmax(logits), N x C, computed without
    forming probabilities (which saturate at 0 or 1): ranks exactly like ``p_c``."""
    logits = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(logits)
    for c in range(logits.shape[1]):
        rest = np.delete(logits, c, axis=1)
        m = rest.max(1)
        out[:, c] = logits[:, c] - (m + np.log(np.exp(rest - m[:, None]).sum(1)))
    return out
