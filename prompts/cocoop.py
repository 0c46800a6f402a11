"""CoCoOp: context conditioned on the image (Zhou et al., CVPR 2022).

A small meta-net (Linear -> ReLU -> Linear, bottleneck E/16) maps the L2-normalised image
embedding to a bias pi(x) added to every context vector: v_i(x) = v_i + pi(x). The meta-net's
last layer starts at zero, so training starts from plain CoOp.

Without an image embedding (e.g. class embeddings for zero-shot classification, computed once
for all images) the bias is zero: the learner then acts as its unconditioned CoOp context.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .coop import CoOp


class CoCoOp(CoOp):
    """Conditional context vectors.

    Args:
        width: D, the text tower's token width.
        embed_dim: E, the CLIP image embedding size (meta-net input).
        n_ctx: number of context vectors.
        init: optional n x D initial vectors.
        depth: layers receiving context (1 = shallow, as published; deep layers are not
            conditioned).
        hidden: meta-net bottleneck width (default E // 16, at least 1).
    """

    method = "cocoop"

    def __init__(
        self,
        *,
        width: int,
        embed_dim: int,
        n_ctx: int = 4,
        init: torch.Tensor | None = None,
        depth: int = 1,
        hidden: int | None = None,
        std: float = 0.02,
    ) -> None:
        super().__init__(width=width, n_ctx=n_ctx, init=init, depth=depth, std=std)
        self.embed_dim = int(embed_dim)
        self.hidden = int(hidden or max(1, self.embed_dim // 16))
        self.meta_net = nn.Sequential(
            nn.Linear(self.embed_dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.width)
        )
        nn.init.zeros_(self.meta_net[2].weight)
        nn.init.zeros_(self.meta_net[2].bias)

    def context(self, image_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """(B|1) x n x D: context plus the meta-net bias of each image (B images)."""
        ctx = self.ctx.unsqueeze(0)  # (1, n, D)
        if image_embedding is None:
            return ctx
        if image_embedding.ndim != 2 or image_embedding.shape[1] != self.embed_dim:
            raise ValueError(
                f"image_embedding must be B x {self.embed_dim}, got {tuple(image_embedding.shape)}"
            )
        emb = F.normalize(image_embedding.float(), dim=-1).to(ctx.dtype)
        return ctx + self.meta_net(emb).unsqueeze(1)  # (B, n, D)

    def text_prompt(self, batch: int, image_embedding: torch.Tensor | None = None) -> dict:
        if image_embedding is not None and image_embedding.shape[0] not in (1, batch):
            raise ValueError(
                f"{image_embedding.shape[0]} image embeddings for {batch} prompts; "
                "give one per prompt or one for all"
            )
        return super().text_prompt(batch, image_embedding)

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "embed_dim": self.embed_dim, "hidden": self.hidden}
