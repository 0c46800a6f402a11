"""Visual prompts: VPT tokens for ViT towers, a pixel "padding prompt" for CNN towers.

- ``mode="tokens"`` (Jia et al., ECCV 2022, "Visual Prompt Tuning"): n learnable tokens of the
  ViT's width are inserted right after the class token, without positional embedding.
  Shallow: only at the input; deep (``depth > 1``): layers 2..depth get their own n tokens,
  replacing the prompt slots at their input. The encoder drops them before pooling, so the patch
  grid (and every decoder shape) is unchanged.
- ``mode="pixels"`` (Bahng et al. 2022, "Exploring Visual Prompts for Adapting Large-Scale
  Models", the "padding" prompter): a learnable frame of width p around the border of the
  normalised input image, added to it. It needs nothing from the tower, so it is the visual
  prompt for CNN towers (and any tower). It starts at zero, i.e. from the base model's outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import PromptLearner, check_depth, deep_list


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return int(h), int(w)


class PadPrompt(nn.Module):
    """A learnable border of width ``pad`` on a 3 x H x W image, zero inside.

    Parameters: top/bottom 3 x p x W, left/right 3 x (H - 2p) x p: 3 * (H * W - (H-2p)(W-2p)).
    """

    def __init__(self, *, image_size: int | tuple[int, int], pad: int) -> None:
        super().__init__()
        h, w = _size(image_size)
        if not 1 <= pad < min(h, w) // 2:
            raise ValueError(f"pad width {pad} must be in 1..{min(h, w) // 2 - 1} for {h}x{w}")
        self.image_size, self.pad = (h, w), int(pad)
        self.top = nn.Parameter(torch.zeros(3, pad, w))
        self.bottom = nn.Parameter(torch.zeros(3, pad, w))
        self.left = nn.Parameter(torch.zeros(3, h - 2 * pad, pad))
        self.right = nn.Parameter(torch.zeros(3, h - 2 * pad, pad))

    def forward(self) -> torch.Tensor:
        """1 x 3 x H x W prompt (zero in the interior)."""
        h, w = self.image_size
        inner = self.top.new_zeros(3, h - 2 * self.pad, w - 2 * self.pad)
        middle = torch.cat([self.left, inner, self.right], dim=2)  # (3, H - 2p, W)
        return torch.cat([self.top, middle, self.bottom], dim=1).unsqueeze(0)


def border_mask(image_size: int | tuple[int, int], pad: int) -> torch.Tensor:
    """1 x 1 x H x W float mask, 1 on the border of width ``pad``."""
    h, w = _size(image_size)
    mask = torch.ones(1, 1, h, w)
    mask[..., pad : h - pad, pad : w - pad] = 0
    return mask


class VPT(PromptLearner):
    """Visual prompt tuning.

    Args:
        mode: "tokens" (open_clip ViT towers) or "pixels" (any tower; the CNN choice).
        width: C, the ViT token width (tokens mode).
        n_tokens: prompt tokens (tokens mode).
        depth: layers receiving tokens (1 = VPT-shallow, more = VPT-deep; tokens mode).
        image_size: model input size H (or (H, W)) (pixels mode).
        pad: border width p in pixels (pixels mode).
        std: scale of the random token initialisation.
    """

    method = "vpt"
    MODES = ("tokens", "pixels")

    def __init__(
        self,
        *,
        mode: str,
        width: int | None = None,
        n_tokens: int = 8,
        depth: int = 1,
        image_size: int | tuple[int, int] | None = None,
        pad: int = 4,
        std: float = 0.02,
    ) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"VPT mode {mode!r}; choose one of {self.MODES}")
        self.mode = mode
        self.depth = check_depth(depth)
        if mode == "tokens":
            if not width or n_tokens < 1:
                raise ValueError("tokens mode needs the ViT width and n_tokens >= 1")
            self.width, self.n_tokens = int(width), int(n_tokens)
            self.tokens = nn.Parameter(torch.randn(self.n_tokens, self.width) * std)  # (n, C)
            self.deep_tokens = (
                nn.Parameter(torch.randn(self.depth - 1, self.n_tokens, self.width) * std)
                if self.depth > 1
                else None
            )
        else:
            if image_size is None:
                raise ValueError("pixels mode needs image_size")
            if self.depth != 1:
                raise ValueError("a pixel prompt has no depth; use depth=1 (or tokens mode)")
            self.pad_prompt = PadPrompt(image_size=image_size, pad=pad)

    def vision_prompt(self, batch: int) -> dict:
        if self.mode == "pixels":
            return {"prompt": self.pad_prompt()}
        return {"prompt": self.tokens.unsqueeze(0), "deep_prompt": deep_list(self.deep_tokens)}

    def hparams(self) -> dict[str, Any]:
        if self.mode == "pixels":
            return {
                "mode": "pixels",
                "image_size": list(self.pad_prompt.image_size),
                "pad": self.pad_prompt.pad,
            }
        out = {"mode": "tokens", "width": self.width, "n_tokens": self.n_tokens}
        return {**out, "depth": self.depth}
