"""Scale-aware vision-language attention (LSMS style).

At one scale, visual context from parallel depthwise convolutions of several kernel sizes (small
kernels for small lesions, large ones for organs) is combined with pixel-to-word cross-attention;
a learnable gate decides per pixel and channel how much language evidence to let in, and the
sentence embedding modulates the result (FiLM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


class MultiKernelContext(nn.Module):
    """Parallel depthwise convolutions with different kernel sizes, summed and mixed 1x1."""

    def __init__(self, *, dim: int, kernel_sizes: list[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False) for k in kernel_sizes
        )
        self.mix = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), norm(dim), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> B x C x H x W."""
        return self.mix(sum(branch(x) for branch in self.branches))


class ScaleAwareVLA(nn.Module):
    """Fuse one scale of visual features with the referring expression.

    Args:
        dim: channels of the visual map and of the attention.
        kernel_sizes: depthwise kernel sizes of the multi-scale context.
        num_heads: attention heads.
    """

    def __init__(self, *, dim: int, kernel_sizes: list[int], num_heads: int):
        super().__init__()
        self.context = MultiKernelContext(dim=dim, kernel_sizes=kernel_sizes)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.q_norm = nn.LayerNorm(dim)
        self.gate = nn.Conv2d(2 * dim, dim, 1)
        self.film = nn.Linear(dim, 2 * dim)
        self.out = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, bias=False), norm(dim), nn.GELU()
        )
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text-independent part: multi-kernel context (B x C x H x W) and the normalised
        attention queries (B x HW x C). Cached with the image features, so a follow-up prompt
        on the same image skips it."""
        ctx = self.context(x)
        q = self.q_norm((x + ctx).flatten(2).transpose(1, 2))  # (B, HW, C)
        return ctx, q

    def forward(
        self,
        x: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        sentence: torch.Tensor,
        prepared: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Fuse language into a visual map.

        Args:
            x: B x C x H x W visual features.
            words: B x T x C projected word features.
            word_mask: B x T bool, True for real tokens.
            sentence: B x C projected sentence embedding.
            prepared: the output of :meth:`prepare` for ``x`` (computed here when None).

        Returns:
            B x C x H x W language-conditioned features.
        """
        b, c, h, w = x.shape
        ctx, q = self.prepare(x) if prepared is None else prepared
        attn, _ = self.attn(q, words, words, key_padding_mask=~word_mask, need_weights=False)
        attn = attn.transpose(1, 2).reshape(b, c, h, w)
        gate = torch.sigmoid(self.gate(torch.cat([ctx, attn], dim=1)))
        y = x + ctx + gate * attn
        gamma, beta = self.film(sentence).chunk(2, dim=-1)  # (B, C) each
        y = y * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return y + self.out(y)


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a map: max-pool when shrinking by an integer factor, bilinear otherwise."""
    if x.shape[-2:] == size:
        return x
    if x.shape[-2] > size[0] and x.shape[-2] % size[0] == 0 and x.shape[-1] % size[1] == 0:
        return F.max_pool2d(x, x.shape[-2] // size[0])
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
