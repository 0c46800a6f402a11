"""Text encoder: the open_clip text tower, returning per-token features and the CLIP embedding.

Two tower kinds:

- "clip": open_clip's own causal ``TextTransformer``. In ``open_clip.CLIP`` its parts live as
  attributes of the CLIP model itself (token_embedding, positional_embedding, transformer,
  ln_final, text_projection, attn_mask); in ``CustomTextCLIP`` they live in ``model.text``. Either
  way this module keeps references to those parts (not to the whole CLIP model, whose visual
  tower belongs to ``VisionEncoder``).
- "hf": open_clip's ``HFTextEncoder`` (BiomedCLIP's PubMedBERT, MiniLM, ...), kept as ``self.text``.

Prompt learners (CoOp, CoCoOp, MaPLe) pass ``ctx``: B x n x D context embeddings inserted right
after the start token ([SOT] / [CLS]), and optionally ``deep_ctx``, one such tensor per later
layer replacing the same slots there. Without them the forward pass is the plain tower's.
"""

from __future__ import annotations

from typing import Any

import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
from open_clip.transformer import TextTransformer, text_global_pool
from torch import nn

from .prompt_hooks import check_prompt, deep_prompts, fit_length, insert_after_first

TRAINABLE_MODES = ("full", "frozen")


class TextEncoder(nn.Module):
    """open_clip text tower with token outputs.

    Args:
        clip_model: an open_clip ``CLIP`` or ``CustomTextCLIP``; only its text parts are kept.
        tokenizer: the open_clip tokenizer of this model (``SimpleTokenizer`` or ``HFTokenizer``).
        context_length: T, tokens per prompt (longer prompts are truncated).
        trainable: "full" or "frozen" (see ``set_trainable``).

    Attributes:
        width: D, per-token feature size.
        embed_dim: E, CLIP joint embedding size.
        context_length: T.
        tower_kind: "clip" or "hf".
    """

    def __init__(
        self,
        *,
        clip_model: nn.Module,
        tokenizer: Any,
        context_length: int,
        trainable: str = "full",
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        text = getattr(clip_model, "text", None)
        if isinstance(text, HFTextEncoder):
            self.tower_kind = "hf"
            self.text = text
            self.width = int(text.config.hidden_size)
            self.embed_dim = int(text.output_dim)
            self.pad_id = int(text.config.pad_token_id or 0)
        else:
            src = text if isinstance(text, TextTransformer) else clip_model
            if text is not None and not isinstance(text, TextTransformer):
                raise NotImplementedError(
                    f"unsupported text tower {type(text).__name__}; supported: open_clip "
                    "TextTransformer (CLIP, CustomTextCLIP) and HFTextEncoder."
                )
            if getattr(src, "cls_emb", None) is not None:
                raise NotImplementedError("CoCa-style text towers (appended CLS) are not supported")
            self.tower_kind = "clip"
            self.token_embedding = src.token_embedding
            self.positional_embedding = src.positional_embedding
            self.transformer = src.transformer
            self.ln_final = src.ln_final
            self.text_projection = src.text_projection
            self.register_buffer("attn_mask", src.attn_mask, persistent=False)
            # CLIP: text_pool_type / text_eos_id; TextTransformer: pool_type / eos_id
            self.pool_type = getattr(src, "text_pool_type", getattr(src, "pool_type", "argmax"))
            self.eos_id = getattr(src, "text_eos_id", getattr(src, "eos_id", None))
            self.pad_id = int(getattr(src, "pad_id", 0))
            self.use_pad_mask = bool(getattr(src, "use_pad_mask", False))
            self.heads = int(getattr(src, "heads", 1))
            self.width = int(src.transformer.width)
            proj = self.text_projection
            if proj is None:
                self.embed_dim = self.width
            elif isinstance(proj, nn.Linear):
                self.embed_dim = int(proj.out_features)
            else:
                self.embed_dim = int(proj.shape[1])
        self.set_trainable(trainable)

    def set_trainable(self, mode: str) -> None:
        """ "full": the whole text tower trains; "frozen": no text parameter trains."""
        if mode not in TRAINABLE_MODES:
            raise ValueError(f"trainable={mode!r}; choose one of {TRAINABLE_MODES}")
        self.trainable = mode
        for p in self.parameters():
            p.requires_grad = mode == "full"
        self.train(self.training)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if getattr(self, "trainable", "full") == "frozen":
            super().train(False)  # no dropout in a frozen tower
        return self

    # ------------------------------------------------------------------ tokenizer
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize prompts with the model's own tokenizer.

        Args:
            texts: N prompts; longer ones are truncated to ``context_length`` (empty ones are
                tokenized as start/end tokens only; the API layer rejects them before this).

        Returns:
            "ids": NxT long, "mask": NxT bool (True = real token, incl. start/end tokens).
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of str")
        ids = self.tokenizer(list(texts), context_length=self.context_length)  # (N, T)
        if isinstance(self.tokenizer, SimpleTokenizer):
            # pad id 0 is also a real BPE token ("!"): real tokens are those up to the first EOT
            eot = (ids == self.tokenizer.eot_token_id).int().argmax(dim=-1)  # (N,)
            mask = torch.arange(ids.shape[1]).unsqueeze(0) <= eot.unsqueeze(1)
        elif isinstance(self.tokenizer, HFTokenizer):
            mask = ids != self.tokenizer.tokenizer.pad_token_id
        else:
            mask = ids != self.pad_id
        if self.tower_kind == "hf" or getattr(self, "pool_type", "") in ("argmax", "eos", "first"):
            # Drop trailing all-padding columns: positions are absolute and pooling ignores
            # padding, so outputs are unchanged and a short prompt costs a few tokens, not T.
            keep = max(1, int(mask.sum(1).max()))
            ids, mask = ids[:, :keep], mask[:, :keep]
        return {"ids": ids.long(), "mask": mask}

    # ------------------------------------------------------------------ prompt hooks
    @property
    def layers(self) -> nn.ModuleList:
        """The tower's blocks in order (deep context enters at their inputs)."""
        if self.tower_kind == "clip":
            return self.transformer.resblocks
        model = self.text.transformer
        for path in ("encoder.layer", "encoder.layers", "layers", "transformer.layer"):
            mod = model
            for part in path.split("."):
                mod = getattr(mod, part, None)
            if isinstance(mod, nn.ModuleList):
                return mod
        raise NotImplementedError(f"cannot find the blocks of {type(model).__name__}")

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """BxT token ids -> BxTxD input word embeddings (no positions), e.g. to initialise
        learned context from a phrase."""
        if self.tower_kind == "hf":
            return self.text.transformer.get_input_embeddings()(ids)
        return self.token_embedding(ids)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        ctx: torch.Tensor | None = None,
        deep_ctx: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode tokenized prompts.

        Args:
            ids: BxT long token ids from ``tokenize`` (any T up to the context length).
            mask: BxT bool, True = real token.
            ctx: optional (B or 1) x n x D learned context inserted after the start token.
                CLIP towers have n fewer slots for words: a longer prompt loses its tail words
                (its end token is kept, so pooling still works).
            deep_ctx: optional list of (B or 1) x n x D tensors, one per layer after the first
                (up to ``len(layers) - 1``), replacing the context slots at that layer's input.

        Returns:
            "tokens": BxT'xD per-token features after the final norm (D = ``width``); T' = T
                without ``ctx``, else (words kept) + n, context slots included.
            "mask": BxT' bool (context slots are True).
            "embedding": BxE projected sentence embedding (not normalised), equal to
                ``model.encode_text(ids)`` when no context is given.
        """
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(
                f"ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must both be BxT"
            )
        if ctx is None:
            if deep_ctx:
                raise ValueError("deep_ctx needs ctx (the first layer's context) as well")
            if self.tower_kind == "hf":
                return self._forward_hf(ids, mask)
            return self._forward_clip(ids, mask)
        check_prompt(ctx, ids.shape[0], self.width, "ctx")
        for i, d in enumerate(deep_ctx or []):
            check_prompt(d, ids.shape[0], self.width, f"deep_ctx[{i}]")
            if d.shape[1] != ctx.shape[1]:
                raise ValueError(f"deep_ctx[{i}] has {d.shape[1]} tokens, ctx has {ctx.shape[1]}")
        if self.tower_kind == "hf":
            return self._forward_hf_ctx(ids, mask, ctx, deep_ctx)
        return self._forward_clip_ctx(ids, mask, ctx, deep_ctx)

    def _forward_clip(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        t = ids.shape[1]
        if t > self.positional_embedding.shape[0]:
            raise ValueError(f"{t} tokens > context length {self.positional_embedding.shape[0]}")
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(ids).to(cast_dtype)  # (B, T, D)
        x = x + self.positional_embedding[:t].to(cast_dtype)
        attn_mask = self.attn_mask[:t, :t] if self.attn_mask is not None else None
        if self.use_pad_mask and attn_mask is None:
            attn_mask = self._pad_attn_mask(ids, x.dtype)
        x = self.transformer(x, attn_mask=attn_mask)
        x = self.ln_final(x)  # (B, T, D)
        pooled = text_global_pool(x, ids, self.pool_type, eos_token_id=self.eos_id)
        return {"tokens": x, "mask": mask, "embedding": self._project(pooled)}

    def _pad_attn_mask(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B * heads) x T x T additive mask hiding padding keys, as open_clip's bidirectional
        TextTransformer builds it."""
        t = ids.shape[1]
        key = torch.zeros(ids.shape, dtype=dtype, device=ids.device)
        key = key.masked_fill(ids == self.pad_id, float("-inf"))  # (B, T)
        return key[:, None, :].expand(-1, t, -1).repeat_interleave(self.heads, 0)

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        """The CLIP text projection (a Linear or a D x E matrix), if the tower has one."""
        if self.text_projection is None:
            return pooled
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection

    def _forward_hf(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        am = mask.long()
        out = self.text.transformer(input_ids=ids, attention_mask=am)
        pooled = self.text.pooler(out, am)
        return {
            "tokens": out.last_hidden_state,  # (B, T, D)
            "mask": mask,
            "embedding": self.text.proj(pooled),
        }

    def _forward_clip_ctx(self, ids, mask, ctx, deep_ctx) -> dict[str, torch.Tensor]:
        n = ctx.shape[1]
        ids, mask = fit_length(ids, mask, self.positional_embedding.shape[0] - n)
        b, t = ids.shape
        cast_dtype = self.transformer.get_cast_dtype()
        x = insert_after_first(self.token_embedding(ids).to(cast_dtype), ctx)  # (B, T + n, D)
        x = x + self.positional_embedding[: t + n].to(cast_dtype)
        mask = insert_after_first(mask[..., None], mask.new_ones(1, n, 1))[..., 0]  # (B, T + n)
        attn_mask = self.attn_mask[: t + n, : t + n] if self.attn_mask is not None else None
        if self.use_pad_mask and attn_mask is None:
            ext = insert_after_first(ids[..., None], ids.new_full((1, n, 1), -1))[..., 0]
            attn_mask = self._pad_attn_mask(ext, x.dtype)
        batch_first = getattr(self.transformer, "batch_first", True)
        with deep_prompts(self.layers, deep_ctx, start=1, batch_first=batch_first):
            x = self.transformer(x, attn_mask=attn_mask)
        x = self.ln_final(x)  # (B, T + n, D)
        rows = torch.arange(b, device=x.device)
        if self.pool_type == "first":
            pooled = x[:, 0]
        elif self.pool_type == "last":
            pooled = x[:, -1]
        elif self.pool_type in ("argmax", "eos"):
            if self.pool_type == "argmax":
                idx = ids.argmax(-1)  # the end token has the highest id
            else:
                idx = (ids == self.eos_id).int().argmax(-1)
            pooled = x[rows, torch.where(idx > 0, idx + n, idx)]  # words after the context shift
        else:
            raise NotImplementedError(f"text pool type {self.pool_type!r} with learned context")
        return {"tokens": x, "mask": mask, "embedding": self._project(pooled)}

    def _forward_hf_ctx(self, ids, mask, ctx, deep_ctx) -> dict[str, torch.Tensor]:
        hf = self.text.transformer
        n = ctx.shape[1]
        limit = int(getattr(hf.config, "max_position_embeddings", 1 << 30))
        ids, mask = fit_length(ids, mask, limit - n)
        x = insert_after_first(hf.get_input_embeddings()(ids), ctx)  # (B, T + n, D)
        mask = insert_after_first(mask[..., None], mask.new_ones(1, n, 1))[..., 0]  # (B, T + n)
        am = mask.long()
        with deep_prompts(self.layers, deep_ctx, start=1):
            out = hf(inputs_embeds=x, attention_mask=am)
        pooled = self.text.pooler(out, am)
        return {"tokens": out.last_hidden_state, "mask": mask, "embedding": self.text.proj(pooled)}
