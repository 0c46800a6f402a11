"""CoOp: learnable context vectors in front of the words (Zhou et al., IJCV 2022).

The prompt "[SOT] v_1 ... v_n <words> [EOT]" replaces a hand-written template: the n context
vectors v_i live in the text tower's word-embedding space (width D) and are the only trained
parameters. Initialise them from a phrase ("a CT image of") or randomly (normal, std 0.02).

``depth > 1`` gives deep context (as in MaPLe/VPT-deep): layers 2..depth of the text tower get
their own n context vectors, replacing the context slots at their input. It works for both text
tower kinds (open_clip's causal transformer and HF BERT-style encoders) since the encoder
injects them with forward pre-hooks on its blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import PromptLearner, check_depth, context_parameter, deep_list


class CoOp(PromptLearner):
    """Unified (class-agnostic) context vectors.

    Args:
        width: D, the text tower's token width.
        n_ctx: n, number of context vectors.
        init: optional n x D initial vectors (e.g. the token embeddings of a phrase).
        depth: layers receiving context (1 = shallow, CoOp as published).
        std: scale of the random initialisation.
    """

    method = "coop"

    def __init__(
        self,
        *,
        width: int,
        n_ctx: int = 4,
        init: torch.Tensor | None = None,
        depth: int = 1,
        std: float = 0.02,
    ) -> None:
        super().__init__()
        self.width, self.n_ctx, self.depth = int(width), int(n_ctx), check_depth(depth)
        self.ctx = context_parameter(self.n_ctx, self.width, init, std)  # (n, D)
        self.deep_ctx = (
            nn.Parameter(torch.randn(self.depth - 1, self.n_ctx, self.width) * std)
            if self.depth > 1
            else None
        )  # (depth - 1, n, D)

    def context(self, image_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """(B|1) x n x D context for the first layer."""
        return self.ctx.unsqueeze(0)

    def text_prompt(self, batch: int, image_embedding: torch.Tensor | None = None) -> dict:
        return {"ctx": self.context(image_embedding), "deep_ctx": deep_list(self.deep_ctx)}

    def hparams(self) -> dict[str, Any]:
        return {"width": self.width, "n_ctx": self.n_ctx, "depth": self.depth}
