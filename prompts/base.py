"""The prompt-learner interface shared by CoOp, CoCoOp, VPT and MaPLe.

A learner owns a few learnable tensors and hands them to the encoders on every forward pass;
it never touches the base model's weights. The model calls:

- ``text_prompt(batch, image_embedding) -> dict``: keyword arguments for the text encoder,
  ``{"ctx": (B|1) x n x D, "deep_ctx": [(B|1) x n x D, ...] | None}``, or ``{}``;
- ``vision_prompt(batch) -> dict``: keyword arguments for the vision encoder,
  ``{"prompt": (B|1) x n x C tokens | (B|1) x 3 x H x W pixels, "deep_prompt": [...] | None}``,
  or ``{}``.

This package never imports ``vlseg``: learners are built from plain sizes and tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PromptLearner(nn.Module):
    """Base class: no prompts. Subclasses set ``method`` and override one or both hooks."""

    method: str = "none"

    def text_prompt(self, batch: int, image_embedding: torch.Tensor | None = None) -> dict:
        """Keyword arguments for the text encoder for a batch of ``batch`` prompts."""
        return {}

    def vision_prompt(self, batch: int) -> dict:
        """Keyword arguments for the vision encoder for a batch of ``batch`` images."""
        return {}

    def hparams(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this learner's shapes (recorded in adapters)."""
        return {}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter of ``module`` (the base model under a learner)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def deep_list(deep: nn.Parameter | None) -> list[torch.Tensor] | None:
    """(L-1) x n x D per-layer parameter -> list of 1 x n x D tensors (None when shallow)."""
    if deep is None:
        return None
    return [d.unsqueeze(0) for d in deep]


def context_parameter(n: int, width: int, init: torch.Tensor | None, std: float) -> nn.Parameter:
    """n x width context vectors: a copy of ``init`` (e.g. a phrase's token embeddings), or
    normal(0, std) as in CoOp's random initialisation."""
    if n < 1 or width < 1:
        raise ValueError(f"context needs n >= 1 tokens of width >= 1, got n={n}, width={width}")
    if init is None:
        return nn.Parameter(torch.randn(n, width) * std)
    if tuple(init.shape) != (n, width):
        raise ValueError(
            f"context init has shape {tuple(init.shape)}, expected ({n}, {width}): "
            f"give a phrase of exactly {n} tokens or change n_ctx to {init.shape[0]}"
        )
    return nn.Parameter(init.detach().clone().float())


def check_depth(depth: int, layers: int | None = None) -> int:
    """Validate the number of layers that receive prompts (1 = shallow)."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1 (1 = shallow prompts), got {depth!r}")
    if layers is not None and depth > layers:
        raise ValueError(f"depth={depth} but the tower has {layers} layers; use 1..{layers}")
    return depth
