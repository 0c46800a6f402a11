"""faiss retrieval index over image-text embeddings (no vlseg imports).

``Index`` (faiss over L2-normalised embeddings, inner product, with a JSONL metadata sidecar and an
atomic save) lives in :mod:`retrieval.index`; id-based recall metrics in :mod:`retrieval.metrics`.
``Index`` is imported lazily so that the metrics work without faiss installed::

    from retrieval import Index, retrieval_recall

    index = Index.build(image_emb, [{"image": path} for path in paths])  # (N, D)
    index.search_meta(text_emb, k=5)  # text -> image
    retrieval_recall(index, text_emb, relevant_image_ids, ks=(1, 5, 10))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retrieval.metrics import knn_recall, recall_at_k, retrieval_recall

if TYPE_CHECKING:
    from retrieval.index import Index

__all__ = ["Index", "knn_recall", "recall_at_k", "retrieval_recall"]


def __getattr__(name: str) -> Any:
    if name == "Index":
        from retrieval.index import Index

        return Index
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
