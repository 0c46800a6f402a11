"""Shared plumbing for prompt learners: deep-prompt injection and context-length fitting.

Prompt learners (``prompts/``) produce tensors; the encoders insert them. Shallow prompts are
concatenated to the input sequence by the encoders themselves; deep prompts replace the same
sequence slots at the input of later blocks, done here with temporary forward pre-hooks so the
towers' own forward code (open_clip ``Transformer``, HF ``BertEncoder``, ...) stays untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def _replace(x: torch.Tensor, p: torch.Tensor, start: int, batch_first: bool) -> torch.Tensor:
    """Write prompt p (B|1 x n x D) into sequence slots [start, start + n) of x."""
    n = p.shape[1]
    if batch_first:  # x: (B, L, D)
        p = p.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :start], p, x[:, start + n :]], dim=1)
    p = p.to(x.dtype).expand(x.shape[1], -1, -1).transpose(0, 1)  # x: (L, B, D)
    return torch.cat([x[:start], p, x[start + n :]], dim=0)


@contextmanager
def deep_prompts(
    layers: Sequence[nn.Module],
    prompts: Sequence[torch.Tensor] | None,
    *,
    start: int = 1,
    batch_first: bool = True,
) -> Iterator[None]:
    """While active, the input of ``layers[i + 1]`` gets ``prompts[i]`` in slots [start, start+n).

    Args:
        layers: the tower's blocks in order; layer 0 sees the shallow prompt already in place.
        prompts: up to ``len(layers) - 1`` tensors, each (B or 1) x n x D; None or [] = no-op.
        start: first prompt slot (1: right after the start / class token).
        batch_first: whether the blocks see (B, L, D) (else (L, B, D), old open_clip layout).
    """
    if not prompts:
        yield
        return
    if len(prompts) > len(layers) - 1:
        raise ValueError(
            f"{len(prompts)} deep prompts for {len(layers)} layers; at most {len(layers) - 1} "
            "(the first layer takes the shallow prompt)"
        )
    handles = []

    def make_hook(p: torch.Tensor):
        def hook(module, args, kwargs):
            if args:
                return (_replace(args[0], p, start, batch_first), *args[1:]), kwargs
            key = "hidden_states" if "hidden_states" in kwargs else "x"
            kwargs = {**kwargs, key: _replace(kwargs[key], p, start, batch_first)}
            return args, kwargs

        return hook

    try:
        for layer, p in zip(list(layers)[1:], prompts, strict=False):
            handles.append(layer.register_forward_pre_hook(make_hook(p), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def fit_length(
    ids: torch.Tensor, mask: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncate B x T token rows to ``keep`` columns, keeping each row's last real token.

    The last real token (CLIP's end-of-text, BERT's [SEP]) carries the pooled embedding, so a
    row that would lose it gets it written into its last kept slot instead.
    """
    if keep < 2:
        raise ValueError(f"{keep} token slots left next to the prompt; use fewer context tokens")
    if ids.shape[1] <= keep:
        return ids, mask
    last = mask.long().sum(1).clamp(min=1) - 1  # (B,)
    out_ids, out_mask = ids[:, :keep].clone(), mask[:, :keep].clone()
    cut = last >= keep
    out_ids[cut, keep - 1] = ids[cut, last[cut]]
    out_mask[cut] = True
    return out_ids, out_mask


def insert_after_first(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """B x T x D sequence, (B|1) x n x D prompt -> B x (T + n) x D with p after position 0."""
    p = p.to(x.dtype).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :1], p, x[:, 1:]], dim=1)


def check_prompt(p: torch.Tensor, batch: int, width: int, what: str) -> None:
    """Validate a (B or 1) x n x D prompt tensor."""
    if not torch.is_tensor(p) or p.ndim != 3 or p.shape[2] != width or p.shape[0] not in (1, batch):
        shape = tuple(p.shape) if torch.is_tensor(p) else type(p).__name__
        raise ValueError(f"{what} must be (B or 1) x n x {width} with B={batch}, got {shape}")


@contextmanager
def stage_prompts(
    stages: Sequence[nn.Module], prompts: dict[int, torch.Tensor] | None
) -> Iterator[None]:
    """While active, the output of ``stages[level]`` gets ``prompts[level]`` added to it.

    Args:
        stages: a CNN tower's stage modules at strides 4, 8, 16, 32 (levels 0..3).
        prompts: level -> (B or 1) x C x h x w tensor broadcastable to that stage's output
            (a 1 x 1 map is a per-channel shift); None or {} = no-op.
    """
    if not prompts:
        yield
        return
    handles = []

    def make_hook(level: int, p: torch.Tensor):
        def hook(module, args, output):
            if p.shape[-2:] not in ((1, 1), output.shape[-2:]):
                raise ValueError(
                    f"feature prompt for level {level} is {p.shape[-2]} x {p.shape[-1]}; use 1 x 1 "
                    f"(a per-channel shift) or the stage's map size {tuple(output.shape[-2:])}"
                )
            return output + p.to(output.dtype)

        return hook

    try:
        for level, p in prompts.items():
            handles.append(stages[level].register_forward_hook(make_hook(level, p)))
        yield
    finally:
        for h in handles:
            h.remove()
