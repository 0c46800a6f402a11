"""Recall metrics computed from retrieved ids, not from a dense (Q, N) similarity matrix.

A dense matrix is what ``vlseg.metrics.recall_at_k`` takes; at a million gallery items it no longer
fits, so these work on the (Q, k) ids an index returns. Two different "recalls" live here:

- :func:`recall_at_k` / :func:`retrieval_recall`: retrieval quality, R@k = fraction of queries with
  at least one relevant item among their top k (the image-text retrieval metric).
- :func:`knn_recall`: approximation quality, the fraction of the exact top-k neighbours that an
  approximate index also returns ("10-recall@10" in ANN benchmarks).

No faiss import: the index is duck-typed (anything with ``search(queries, k) -> (scores, ids)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["knn_recall", "recall_at_k", "retrieval_recall"]


class _Searchable(Protocol):
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of cut-offs >= 1, got {ks}")
    return ks


def _relevant_sets(relevant: Any, q: int) -> list[set[int]]:
    if isinstance(relevant, np.ndarray) and relevant.ndim == 1:
        relevant = relevant.tolist()
    if len(relevant) != q:
        raise ValueError(f"relevant has {len(relevant)} entries but there are {q} queries")
    sets = []
    for i, rel in enumerate(relevant):
        s = {int(rel)} if np.isscalar(rel) else {int(r) for r in rel}
        if not s:
            raise ValueError(f"query {i} has no relevant id; drop it before computing recall")
        sets.append(s)
    return sets


def recall_at_k(
    retrieved_ids: np.ndarray,
    relevant: Sequence[int] | Sequence[Iterable[int]] | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """R@k from retrieved ids: a query scores a hit at k if any relevant id is in its top k.

    Args:
        retrieved_ids: (Q, K) ids best first, as returned by ``Index.search``; -1 marks no result.
        relevant: per query, one relevant id (a (Q,) int array or list) or an iterable of them
            (e.g. every image that shares a caption).
        ks: cut-offs, each >= 1; a k larger than K counts only the K retrieved.

    Returns:
        ``{"R@k": recall in [0, 1]}`` for each k in ``ks``.
    """
    ids = np.asarray(retrieved_ids)
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise ValueError(f"retrieved_ids must have shape (Q, K) with Q >= 1, got {ids.shape}")
    ks = _check_ks(ks)
    sets = _relevant_sets(relevant, ids.shape[0])
    k_total = ids.shape[1]
    first_hit = np.full(ids.shape[0], k_total)  # (Q,) rank of the first relevant id, K if none
    for i, (row, rel) in enumerate(zip(ids.tolist(), sets, strict=True)):
        first_hit[i] = next((r for r, j in enumerate(row) if j in rel), k_total)
    return {f"R@{k}": float((first_hit < k).mean()) for k in ks}


def retrieval_recall(
    index: _Searchable,
    queries: np.ndarray,
    relevant: Sequence[int] | Sequence[Iterable[int]] | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Search ``index`` once at max(ks) and score R@k (see :func:`recall_at_k`).

    Args:
        index: e.g. a ``retrieval.Index`` over image embeddings (text -> image retrieval).
        queries: (Q, D) query embeddings.
        relevant: per query, the relevant faiss id or ids.
        ks: cut-offs, each >= 1.

    Returns:
        ``{"R@k": recall in [0, 1]}`` for each k in ``ks``.
    """
    _, ids = index.search(queries, max(_check_ks(ks)))
    return recall_at_k(ids, relevant, ks)


def knn_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Fraction of the exact top-k neighbours found in the approximate top-k, averaged over queries.

    Args:
        approx_ids: (Q, k) ids from an approximate index; -1 entries count as misses.
        exact_ids: (Q, k) ids from exact search; -1 entries (gallery smaller than k) are ignored.

    Returns:
        Recall in [0, 1].
    """
    approx, exact = np.asarray(approx_ids), np.asarray(exact_ids)
    if approx.ndim != 2 or approx.shape != exact.shape or approx.shape[0] == 0:
        raise ValueError(
            f"approx_ids {approx.shape} and exact_ids {exact.shape} must both be (Q, k), Q >= 1"
        )
    hits = (approx[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)  # (Q, k, k)
    found = hits.any(axis=1).sum(axis=1)  # (Q,) exact ids that were found
    wanted = np.maximum((exact >= 0).sum(axis=1), 1)
    return float((found / wanted).mean())
