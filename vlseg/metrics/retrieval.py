"""Retrieval metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlseg.metrics._convert import ArrayLike, binarize, class_ids, to_numpy

__all__ = ["recall_at_k"]


def recall_at_k(
    similarity: ArrayLike, relevant: ArrayLike, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Fraction of queries with at least one relevant gallery item among their top k.

    Ties in ``similarity`` are broken by gallery index (lower first). A k larger than the gallery
    is clamped to N.

    Args:
        similarity: (Q, N) scores, higher meaning more similar.
        relevant: (Q,) int index of the single correct gallery item per query, or a (Q, N) bool
            matrix marking every correct item (e.g. several images that share one caption).
        ks: cut-offs, each >= 1.

    Returns:
        ``{"R@k": recall in [0, 1]}`` for each k in ``ks``.
    """
    sim = to_numpy(similarity, "similarity").astype(np.float64)
    if sim.ndim != 2 or 0 in sim.shape:
        raise ValueError(f"similarity must have shape (Q, N) with Q, N >= 1, got {sim.shape}")
    if np.isnan(sim).any():
        raise ValueError("similarity contains NaN")
    q, n = sim.shape
    rel = to_numpy(relevant, "relevant")
    if rel.ndim == 1:
        idx = class_ids(rel, "relevant", q)
        if idx.max() >= n:
            raise ValueError(f"relevant holds gallery index {idx.max()} but the gallery has {n}")
        rel = np.zeros((q, n), dtype=bool)
        rel[np.arange(q), idx] = True
    elif rel.shape == (q, n):
        rel = binarize(rel, "relevant")
    else:
        raise ValueError(f"relevant must be (Q,)=({q},) indices or a (Q, N)={sim.shape} bool mask")
    if not rel.any(axis=1).all():
        missing = np.flatnonzero(~rel.any(axis=1))[:5].tolist()
        raise ValueError(f"queries {missing} have no relevant gallery item; drop them first")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be >= 1, got {tuple(ks)}")
    order = np.argsort(-sim, axis=1, kind="stable")  # (Q, N) best first
    first_hit = np.take_along_axis(rel, order, axis=1).argmax(axis=1)  # (Q,) rank of best hit
    return {f"R@{k}": float((first_hit < min(int(k), n)).mean()) for k in ks}
