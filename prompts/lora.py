"""LoRA on any torch module through peft, and the adapter's own tensors.

``inject_lora`` wraps the Linear (and Conv2d) layers whose attribute name is among ``targets``
with peft LoRA layers (``LoraConfig`` + ``inject_adapter_in_model``: no PeftModel wrapper, so the
module keeps its class and forward). Only the ``lora_`` tensors train and get saved; the wrapped
base weights move to ``<name>.base_layer.weight`` in the state dict.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

LORA_TYPES = (nn.Linear, nn.Conv2d)


def lora_candidates(module: nn.Module) -> dict[str, list[str]]:
    """Attribute name -> full module names of the layers LoRA can wrap (Linear, Conv2d).

    Linear layers inside ``nn.MultiheadAttention`` are left out: its forward reads their weights
    directly, so a wrapper would be bypassed.
    """
    skip = {
        f"{name}.{child}" if name else child
        for name, m in module.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for child, _ in m.named_children()
    }
    out: dict[str, list[str]] = {}
    for name, m in module.named_modules():
        if isinstance(m, LORA_TYPES) and name and name not in skip:
            out.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return out


def inject_lora(
    module: nn.Module,
    *,
    rank: int,
    targets: Iterable[str],
    alpha: float | None = None,
    dropout: float = 0.0,
    required: bool = True,
) -> list[str]:
    """Add LoRA (rank ``rank``, scale ``alpha / rank``, default alpha = 2 * rank) to the layers
    of ``module`` whose attribute name is in ``targets``.

    Returns:
        The full names of the wrapped layers ([] if none match and not ``required``).

    Raises:
        ValueError: no target matches (with ``required``); the message lists the candidates.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    candidates = lora_candidates(module)
    targets = list(targets)
    names = sorted(n for t in targets for n in candidates.get(t, []))
    if not names:
        if required:
            raise ValueError(
                f"none of lora_targets {targets} names a Linear/Conv2d layer here; "
                f"available: {sorted(candidates)}"
            )
        return []
    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=names,  # exact full names: no layer outside the list is touched
    )
    inject_adapter_in_model(cfg, module)
    return names


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors of ``module`` (keys contain ``lora_``)."""
    return {k: v for k, v in module.state_dict().items() if "lora_" in k}


def load_lora_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load LoRA tensors saved by :func:`lora_state_dict`; keys must match exactly."""
    expected = set(lora_state_dict(module))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"LoRA tensors do not match the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]} (was the adapter made with other lora_targets or rank?)"
        )
    module.load_state_dict(state, strict=False)


def merged_base_key(key: str) -> str:
    """State-dict key of a LoRA-wrapped model -> the key the unwrapped model had."""
    return key.replace(".base_layer.", ".")
