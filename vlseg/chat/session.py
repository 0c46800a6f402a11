"""Per-session image cache and the model calls that use it (segment, classify, embed).

A :class:`~vlseg.predictor.Segmenter` caches one image; a chat service serves many users with one
model. So the service treats the Segmenter as read-only and each :class:`ChatSession` keeps its
own encoded image. The calls below are the Segmenter's own code paths (``_encode`` and
``_answer``, the ones ``set_image`` and ``segment`` use; ``class_embeddings`` for ``classify``)
with the session's features passed in, so a chat answer equals ``Segmenter.segment`` (or
``Segmenter.classify``) on the same image and text.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlseg.data.io import LoadedImage, load_image
from vlseg.modeling.vlseg import ImageFeatures
from vlseg.predictor import ClassificationResult, SegmentationResult, Segmenter


@dataclass
class ChatSession:
    """One user's conversation; lives in ``gr.State``, never in the shared model.

    Attributes:
        image: the current image, or None before the first upload.
        features: the image encoder's output for ``image`` (on the model's device).
        image_name: file name shown in replies.
        spacing: pixel spacing (row_mm, col_mm) the user stated; overrides the image's own.
        results: the last segmentation results (``probs`` dropped to save memory).
        history: the chat log in messages format (``{"role": ..., "content": ...}``).
        directory: where this session's files (overlays, masks) are written; None until needed.
        turns: messages handled so far (names each turn's files).
        spacing_hint_given: whether the reply already said that areas are in pixels only.
    """

    image: LoadedImage | None = None
    features: ImageFeatures | None = None
    image_name: str = ""
    spacing: tuple[float, float] | None = None
    results: list[SegmentationResult] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    directory: str | None = None
    turns: int = 0
    spacing_hint_given: bool = False

    @property
    def has_image(self) -> bool:
        return self.image is not None and self.features is not None

    @property
    def effective_spacing(self) -> tuple[float, float] | None:
        return self.spacing or (self.image.spacing if self.image is not None else None)

    def close(self) -> None:
        """Delete this session's files and drop the cached features."""
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory, self.features, self.image, self.results = None, None, None, []


def encode_image(
    seg: Segmenter, session: ChatSession, source: Any, *, max_pixels: int, name: str = ""
) -> LoadedImage:
    """Load ``source``, run the image encoder once, and cache the result in ``session``.

    The session is changed only when loading and encoding succeed, so a bad upload keeps the
    previous image.

    Raises:
        ValueError, TypeError, FileNotFoundError: from :func:`vlseg.data.io.load_image`.
    """
    loaded = load_image(source, max_pixels=max_pixels)
    features = seg._encode([loaded])  # the path set_image takes, without touching seg's cache
    session.image, session.features, session.image_name = loaded, features, name
    session.spacing, session.results, session.spacing_hint_given = None, [], False
    return loaded


def segment_cached(seg: Segmenter, session: ChatSession, texts: Sequence[str]):
    """``Segmenter.segment`` on the session's cached image: no image-encoder run.

    Returns:
        One :class:`~vlseg.predictor.SegmentationResult` per text.
    """
    _require_image(session)
    with torch.no_grad():
        return seg._answer(session.features, session.image, list(texts), session.spacing)


def image_embedding(session: ChatSession) -> np.ndarray:
    """The session image's CLIP embedding, L2-normalised: (E,) float32, from the cache."""
    _require_image(session)
    emb = session.features.embedding.detach().float()[0]
    return F.normalize(emb, dim=-1).cpu().numpy().astype(np.float32)


def classify_cached(
    seg: Segmenter, session: ChatSession, labels: Sequence[str], templates: Any = None
) -> ClassificationResult:
    """``Segmenter.classify`` on the session's cached image: no image-encoder run.

    The same computation as ``Segmenter.classify`` (softmax over ``100 * image @ classes.T``
    with the Segmenter's cached, template-averaged class embeddings), with the session's image
    embedding in place of the Segmenter's own cache.

    Args:
        labels: at least two class names.
        templates: a template-set name, a list of ``{}`` strings, or None (``generic``).
    """
    labels = [str(label).strip() for label in labels]
    if len(labels) < 2 or not all(labels):
        raise ValueError("give at least two non-empty labels to choose between")
    classes = seg.class_embeddings(labels, templates)  # (C, E), L2-normalised
    logits = 100.0 * image_embedding(session) @ classes.T  # (C,)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return ClassificationResult(labels, probs.astype(np.float32), labels[int(np.argmax(probs))])


def search_similar(index: Any, session: ChatSession, k: int) -> list[dict[str, Any]]:
    """Nearest cases to the session's image in a retrieval index (``index.search_meta``).

    Returns:
        Up to ``k`` dicts with ``image``, ``caption`` and ``score``, best first.
    """
    vectors = image_embedding(session)[None]  # (1, E)
    hits = index.search_meta(vectors, k)
    if hits and isinstance(hits[0], (list, tuple)):  # one result list per query vector
        hits = hits[0]
    return [dict(h) for h in list(hits)[:k]]


def _require_image(session: ChatSession) -> None:
    if not session.has_image:
        raise RuntimeError("no image in this session: upload one first (encode_image)")


def session_dir(session: ChatSession, root: Path) -> Path:
    """This session's file directory under ``root`` (created on first use)."""
    if session.directory is None or not Path(session.directory).is_dir():
        import tempfile

        root.mkdir(parents=True, exist_ok=True)
        session.directory = tempfile.mkdtemp(prefix="session-", dir=root)
    return Path(session.directory)
