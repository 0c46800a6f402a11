"""Input conversion and validation shared by the metric modules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence


def to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """numpy view of an array, tensor (detached, on the CPU) or nested sequence."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # numpy has no bfloat16
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x)}") from err


def binarize(x: ArrayLike, name: str, threshold: float | None = None) -> np.ndarray:
    """Bool mask from bool / {0, 1} values, or from probabilities in [0, 1] given a threshold."""
    a = to_numpy(x, name)
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name} must be a bool or numeric mask, got dtype {a.dtype}")
    if threshold is not None and np.issubdtype(a.dtype, np.floating):
        if a.size and (np.isnan(a).any() or a.min() < 0 or a.max() > 1):
            raise ValueError(
                f"{name} holds values outside [0, 1] (min {np.nanmin(a):.3g}, max "
                f"{np.nanmax(a):.3g}); pass probabilities (sigmoid the logits) or a binary mask"
            )
        return a > threshold
    bad = (a != 0) & (a != 1)
    if bad.any():
        raise ValueError(
            f"{name} must be binary (bool or 0/1), found {a[bad].flat[0]!r}; threshold it first"
        )
    return a.astype(bool)


def class_ids(x: ArrayLike, name: str, n: int | None = None) -> np.ndarray:
    """(N,) int64 ids >= 0; ``n`` is the row count the ids must match."""
    y = to_numpy(x, name)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise ValueError(f"{name} must be a 1-D integer array (N,), got {y.dtype} {y.shape}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but the scores have {n} rows")
    if y.size and y.min() < 0:
        raise ValueError(f"{name} must hold ids >= 0, found {y.min()}")
    return y.astype(np.int64)
