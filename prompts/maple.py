"""MaPLe: multi-modal prompts, vision prompts coupled to the text context (Khattak et al.,
CVPR 2023).

Text context vectors (as CoOp, width D_t) are learned; the vision prompts are not free
parameters but a learned linear projection of them, so both towers adapt together:

- ViT towers (``mode="tokens"``): layer-l vision tokens = F_l(text context of layer l), one
  ``Linear(D_t, C_v)`` per prompted layer (MaPLe's coupling functions), for layers 1..depth.
- CNN towers (``mode="pixels"``): the projection targets the padding prompt of VPT (Bahng et
  al.): ``Linear(D_t, 3 * g * g)`` of the mean first-layer context gives a coarse g x g colour
  field, bilinearly upsampled to H x W and kept on a border of width p. Deep text context still
  works there, but only the first layer's context feeds the pixel prompt. The projection starts
  at zero (no image change at the start).
- CNN towers (``mode="features"``, the default for them): the projection is a per-channel shift
  added to the output of one CNN stage (``level`` 0..3 = stride 4..32), a rank-r linear map
  ``Linear(D_t, r) -> Linear(r, C_level)`` of the mean first-layer context (the second map
  starts at zero). The prompt enters the network where the later stages, the embedding head
  and the decoder see it, but the backward pass stops at that stage instead of running through
  the whole tower to the pixels, which is what made the pixel form cost more per step than
  full fine-tuning's half. The shift plays the role VPT-deep's later-layer tokens play in ViTs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import PromptLearner, check_depth, context_parameter, deep_list
from .vpt import border_mask


class MaPLe(PromptLearner):
    """Coupled text and vision prompts.

    Args:
        text_width: D_t, the text tower's token width.
        n_ctx: context tokens (also the number of vision tokens in tokens mode).
        init: optional n x D_t initial context (a phrase's token embeddings).
        depth: layers of both towers receiving prompts (1 = shallow).
        mode: "tokens" (open_clip ViT vision tower) or "pixels" (CNN towers).
        vision_width: C_v, the ViT token width (tokens mode).
        image_size: model input size (pixels mode).
        pad: border width of the pixel prompt (pixels mode).
        grid: g, resolution of the projected colour field (pixels mode).
        channels: C of the prompted stage's output (features mode).
        level: the prompted stage, 0..3 = stride 4..32 (features mode).
        rank: r, inner width of the coupling map (features mode).
    """

    method = "maple"
    MODES = ("tokens", "pixels", "features")

    def __init__(
        self,
        *,
        text_width: int,
        n_ctx: int = 2,
        init: torch.Tensor | None = None,
        depth: int = 1,
        mode: str = "tokens",
        vision_width: int | None = None,
        image_size: int | tuple[int, int] | None = None,
        pad: int = 4,
        grid: int = 4,
        channels: int | None = None,
        level: int = 2,
        rank: int = 16,
        std: float = 0.02,
    ) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"MaPLe mode {mode!r}; choose one of {self.MODES}")
        self.mode, self.depth = mode, check_depth(depth)
        self.text_width, self.n_ctx = int(text_width), int(n_ctx)
        self.ctx = context_parameter(self.n_ctx, self.text_width, init, std)  # (n, D_t)
        self.deep_ctx = (
            nn.Parameter(torch.randn(self.depth - 1, self.n_ctx, self.text_width) * std)
            if self.depth > 1
            else None
        )
        if mode == "tokens":
            if not vision_width:
                raise ValueError("tokens mode needs vision_width (the ViT token width)")
            self.vision_width = int(vision_width)
            self.proj = nn.Linear(self.text_width, self.vision_width)
            self.deep_proj = nn.ModuleList(
                nn.Linear(self.text_width, self.vision_width) for _ in range(self.depth - 1)
            )
        elif mode == "features":
            if not channels or level not in range(4) or rank < 1:
                raise ValueError(
                    f"features mode needs channels >= 1 (got {channels}), level in 0..3 (got "
                    f"{level}) and rank >= 1 (got {rank})"
                )
            self.channels, self.level, self.rank = int(channels), int(level), int(rank)
            self.down = nn.Linear(self.text_width, self.rank)
            self.proj = nn.Linear(self.rank, self.channels)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        else:
            if image_size is None:
                raise ValueError("pixels mode needs image_size")
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
            self.image_size, self.pad, self.grid = (int(h), int(w)), int(pad), int(grid)
            self.proj = nn.Linear(self.text_width, 3 * self.grid * self.grid)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
            self.register_buffer("border", border_mask(self.image_size, self.pad), persistent=False)

    def text_prompt(self, batch: int, image_embedding: torch.Tensor | None = None) -> dict:
        return {"ctx": self.ctx.unsqueeze(0), "deep_ctx": deep_list(self.deep_ctx)}

    def vision_prompt(self, batch: int) -> dict:
        if self.mode == "features":
            shift = self.proj(self.down(self.ctx.mean(0))).view(1, self.channels, 1, 1)
            return {"feature_prompt": {self.level: shift}}
        if self.mode == "pixels":
            field = self.proj(self.ctx.mean(0)).view(1, 3, self.grid, self.grid)
            full = F.interpolate(field, size=self.image_size, mode="bilinear", align_corners=False)
            return {"prompt": full * self.border}  # (1, 3, H, W)
        deep = None
        if self.deep_ctx is not None:
            deep = [p(c).unsqueeze(0) for p, c in zip(self.deep_proj, self.deep_ctx, strict=True)]
        return {"prompt": self.proj(self.ctx).unsqueeze(0), "deep_prompt": deep}

    def hparams(self) -> dict[str, Any]:
        out = {"mode": self.mode, "text_width": self.text_width, "n_ctx": self.n_ctx}
        out["depth"] = self.depth
        if self.mode == "tokens":
            return {**out, "vision_width": self.vision_width}
        if self.mode == "features":
            return {**out, "channels": self.channels, "level": self.level, "rank": self.rank}
        return {**out, "image_size": list(self.image_size), "pad": self.pad, "grid": self.grid}
