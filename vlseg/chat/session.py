"""Per-session image cache and the model calls that use it (segment, classify, embed).

A :class:`~vlseg.predictor.Segmenter` caches one image; a chat service serves many users with one
model. So the service never uses the Segmenter's own cache: each :class:`ChatSession` keeps the
:class:`~vlseg.inference.EncodedImage` that ``Segmenter.encode`` returned and passes it to
``Segmenter.segment`` / ``Segmenter.classify``, so a chat answer is the library's answer on the
same image and text, and a follow-up never re-runs the image encoder.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlseg.data.io import LoadedImage
from vlseg.inference import ClassificationResult, EncodedImage, SegmentationResult
from vlseg.predictor import Segmenter


@dataclass
class ChatSession:
    """One user's conversation; lives in ``gr.State``, never in the shared model.

    Attributes:
        encoded: the current image after the image encoder (on the model's device), or None
            before the first upload.
        image_name: file name shown in replies.
        spacing: pixel spacing (row_mm, col_mm) the user stated; overrides the image's own.
        results: the last segmentation results (``probs`` dropped to save memory).
        history: the chat log in messages format (``{"role": ..., "content": ...}``).
        directory: where this session's files (overlays, masks) are written; None until needed.
        turns: messages handled so far (names each turn's files).
        spacing_hint_given: whether the reply already said that areas are in pixels only.
    """

    encoded: EncodedImage | None = None
    image_name: str = ""
    spacing: tuple[float, float] | None = None
    results: list[SegmentationResult] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    directory: str | None = None
    turns: int = 0
    spacing_hint_given: bool = False

    @property
    def image(self) -> LoadedImage | None:
        """The current image as loaded (``rgb`` is what the model saw)."""
        return None if self.encoded is None else self.encoded.images[0]

    @property
    def has_image(self) -> bool:
        return self.encoded is not None

    @property
    def effective_spacing(self) -> tuple[float, float] | None:
        return self.spacing or (self.image.spacing if self.image is not None else None)

    def close(self) -> None:
        """Delete this session's files and drop the cached features."""
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory, self.encoded, self.results = None, None, []


def encode_image(
    seg: Segmenter, session: ChatSession, source: Any, *, max_pixels: int, name: str = ""
) -> LoadedImage:
    """Load ``source``, run the image encoder once, and cache the result in ``session``.

    The session is changed only when loading and encoding succeed, so a bad upload keeps the
    previous image.

    Raises:
        ValueError, TypeError, FileNotFoundError: from :func:`vlseg.data.io.load_image`.
    """
    encoded = seg.encode(source, max_pixels=max_pixels)
    session.encoded, session.image_name = encoded, name
    session.spacing, session.results, session.spacing_hint_given = None, [], False
    return encoded.images[0]


def segment_cached(seg: Segmenter, session: ChatSession, texts: Sequence[str]):
    """``Segmenter.segment`` on the session's cached image: no image-encoder run.

    Returns:
        One :class:`~vlseg.inference.SegmentationResult` per text.
    """
    _require_image(session)
    return seg.segment(session.encoded, list(texts), spacing=session.spacing)


def image_embedding(session: ChatSession) -> np.ndarray:
    """The session image's CLIP embedding, L2-normalised: (E,) float32, from the cache."""
    _require_image(session)
    return session.encoded.embedding[0]


def classify_cached(
    seg: Segmenter, session: ChatSession, labels: Sequence[str] | None, templates: Any = None
) -> ClassificationResult:
    """``Segmenter.classify`` on the session's cached image: no image-encoder run.

    Args:
        labels: at least two class names; None: the model's default labels.
        templates: a template-set name, a list of ``{}`` strings, or None (``generic``).
    """
    _require_image(session)
    return seg.classify(session.encoded, labels, templates)


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
