"""Full-scale decoder with deep supervision, and the presence head.

Each decoder node (UNet 3+ style) sees every scale: finer encoder maps are max-pooled down,
the same-scale encoder map is taken as is, and coarser decoder nodes are upsampled; each source is
projected to ``dim // 4`` channels and the concatenation is fused by a 3x3 convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from .scale_attention import norm, resize_to


class FullScaleDecoder(nn.Module):
    """Decode 4 language-conditioned maps (strides 4, 8, 16, 32) into mask logits.

    Args:
        dim: channels of every input map and decoder node (divisible by 4).
    """

    def __init__(self, *, dim: int, levels: int = 4):
        super().__init__()
        if dim % levels:
            raise ValueError(f"decoder dim {dim} must be divisible by {levels}")
        part = dim // levels
        self.levels = levels
        # proj[i][j]: source j (encoder j <= i, decoder j > i) projected for node i.
        self.proj = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(nn.Conv2d(dim, part, 3, padding=1, bias=False), norm(part), nn.GELU())
                for _ in range(levels)
            )
            for _ in range(levels - 1)
        )
        self.fuse = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), norm(dim), nn.GELU())
            for _ in range(levels - 1)
        )
        self.heads = nn.ModuleList(nn.Conv2d(dim, 1, 1) for _ in range(levels))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode.

        Args:
            feats: ``levels`` maps, finest first, each B x dim x H_i x W_i.

        Returns:
            ``(nodes, logits)``: the finest decoder node (B x dim x H_0 x W_0) and mask logits at
            every level, finest first (B x 1 x H_i x W_i); ``logits[0]`` is the main output.
        """
        dec: dict[int, torch.Tensor] = {self.levels - 1: feats[-1]}
        for i in range(self.levels - 2, -1, -1):
            size = feats[i].shape[-2:]
            sources = [feats[j] if j <= i else dec[j] for j in range(self.levels)]
            parts = [p(resize_to(s, size)) for p, s in zip(self.proj[i], sources, strict=True)]
            dec[i] = self.fuse[i](torch.cat(parts, dim=1))
        logits = [self.heads[i](dec[i]) for i in range(self.levels)]
        return dec[0], logits


class PresenceHead(nn.Module):
    """Is the described thing in the image at all? One logit per (image, text) pair.

    Pools the finest decoder node twice (globally, and weighted by the predicted mask), adds the
    peak mask logit, and scores the result against the sentence embedding.
    """

    def __init__(self, *, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * dim + 1, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, node: torch.Tensor, logits: torch.Tensor, sentence: torch.Tensor):
        """node: B x C x H x W, logits: B x 1 x H x W, sentence: B x C -> B presence logits."""
        prob = torch.sigmoid(logits)
        weighted = (node * prob).sum((2, 3)) / prob.sum((2, 3)).clamp_min(1.0)
        pooled = node.mean((2, 3))
        peak = logits.flatten(1).amax(1, keepdim=True)
        return self.mlp(torch.cat([weighted, pooled * sentence, sentence, peak], dim=1)).squeeze(1)
