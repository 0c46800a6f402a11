"""Per-session image cache and the model calls that use it (segment, classify, embed).

A :class:`~vlseg.predictor.Segmenter` caches one image; a chat service serves many users with one
model. So the service never uses the Segmenter's own cache: each :class:`ChatSession` keeps the
:class:`~vlseg.inference.EncodedImage` that ``Segmenter.encode`` returned (or, for a CT/MR
volume, the :class:`~vlseg.volume.EncodedVolume` of ``Segmenter.encode_volume``: every slice
encoded once) and passes it to ``Segmenter.segment`` / ``Segmenter.classify``, so a chat answer
is the library's answer on the same image and text, and a follow-up never re-runs the image
encoder.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlseg.data.io import LoadedImage
from vlseg.data.volume_io import DEFAULT_MAX_VOXELS, Volume, read_volume
from vlseg.inference import ClassificationResult, EncodedImage, SegmentationResult
from vlseg.predictor import Segmenter
from vlseg.volume import EncodedVolume, VolumeResult


@dataclass
class VolumeOverlay:
    """The last answer on a volume, ready to draw on any slice.

    Attributes:
        masks: one ``S x H x W`` bool mask per target, in display order (like ``Volume.values``).
        labels: the annotation label of each mask (target and measurement).
        colors: ``#rrggbb`` per mask.
    """

    masks: list[np.ndarray]
    labels: list[str]
    colors: list[str]


@dataclass
class ChatSession:
    """One user's conversation; lives in ``gr.State``, never in the shared model.

    Attributes:
        encoded: the current image after the image encoder (on the model's device): an
            ``EncodedImage``, an ``EncodedVolume`` for a volume, or None before the first upload.
        image_name: file name shown in replies.
        spacing: pixel spacing (row_mm, col_mm) the user stated; overrides the image's own
            (2-D images only: a volume's spacing is the file's).
        results: the last segmentation results (``probs`` dropped to save memory):
            ``SegmentationResult`` for an image, ``VolumeResult`` for a volume.
        history: the chat log in messages format (``{"role": ..., "content": ...}``).
        directory: where this session's files (overlays, masks) are written; None until needed.
        turns: messages handled so far (names each turn's files).
        spacing_hint_given: whether the reply already said that areas are in pixels only.
        volume_display: a volume's slices for people, ``S x H x W`` uint8 in the file's own
            window (``Volume.display_uint8``); None for a 2-D image.
        overlay: the last answer on the volume, drawn on whichever slice is shown; or None.
        slice_index: the volume slice shown (the slider's value).
        last_kind: the kind of the last intent acted on (follow-ups such as "and the spleen?"
            repeat a measurement), or "".
        pending: the readings offered by the last "Did you mean ...?" (an answer such as
            "yes" picks one), or ().
        sent_files: files a front end has already sent to this session's client (it may send
            them again as references rather than files).
        slider: whether the front end shows a slice slider (False for the one-picture
            ``segment`` endpoint: replies then do not point to one).
    """

    encoded: EncodedImage | EncodedVolume | None = None
    image_name: str = ""
    spacing: tuple[float, float] | None = None
    results: list[SegmentationResult | VolumeResult] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    directory: str | None = None
    turns: int = 0
    spacing_hint_given: bool = False
    volume_display: np.ndarray | None = field(default=None, repr=False)
    overlay: VolumeOverlay | None = field(default=None, repr=False)
    slice_index: int = 0
    last_kind: str = ""
    pending: tuple[Any, ...] = ()
    sent_files: set[str] = field(default_factory=set, repr=False)
    slider: bool = True

    @property
    def image(self) -> LoadedImage | None:
        """The current 2-D image as loaded (``rgb`` is what the model saw); None for a volume."""
        if self.encoded is None or isinstance(self.encoded, EncodedVolume):
            return None
        return self.encoded.images[0]

    @property
    def volume(self) -> Volume | None:
        """The current volume (values, spacing, the file's shape and affine), or None."""
        return self.encoded.volume if isinstance(self.encoded, EncodedVolume) else None

    @property
    def is_volume(self) -> bool:
        return isinstance(self.encoded, EncodedVolume)

    @property
    def n_slices(self) -> int:
        """Slices of the current volume; 0 for a 2-D image or none."""
        return len(self.encoded) if isinstance(self.encoded, EncodedVolume) else 0

    @property
    def has_image(self) -> bool:
        return self.encoded is not None

    @property
    def effective_spacing(self) -> tuple[float, float] | None:
        return self.spacing or (self.image.spacing if self.image is not None else None)

    def drop_image(self) -> None:
        """Forget the image or volume (features, display slices, results); files stay."""
        self.encoded, self.results = None, []
        self.last_kind, self.pending = "", ()
        self.volume_display, self.overlay, self.slice_index = None, None, 0

    def close(self) -> None:
        """Delete this session's files and drop the cached features."""
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None
        self.sent_files.clear()
        self.drop_image()


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
    session.drop_image()
    session.encoded, session.image_name = encoded, name
    session.spacing, session.spacing_hint_given = None, False
    return encoded.images[0]


def encode_volume(
    seg: Segmenter,
    session: ChatSession,
    source: Any,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    name: str = "",
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 32,
) -> Volume:
    """Read a volume (NIfTI, DICOM series folder or ``.zip``), run the image encoder once on
    every slice, and cache the result in ``session``; the display slices are kept for viewing.

    The session is changed only when reading and encoding succeed, so a bad upload keeps the
    previous image or volume.

    Args:
        max_voxels: larger volumes are refused from their headers, before any pixel is read.
        progress: called as ``progress(done_slices, total_slices)``: once with 0 before the
            encoder starts, then after each batch.

    Raises:
        ValueError, TypeError, FileNotFoundError: from :func:`vlseg.data.volume_io.read_volume`
            (a malformed series, a 4-D NIfTI, too many voxels, ...).
    """
    volume = read_volume(source, max_voxels=max_voxels)
    display = volume.display_uint8()
    if progress is not None:
        progress(0, len(volume))
    encoded = seg.encode_volume(volume, batch_size=batch_size, progress=progress)
    session.drop_image()
    session.encoded, session.image_name = encoded, name
    session.spacing, session.spacing_hint_given = None, False
    session.volume_display, session.slice_index = display, len(volume) // 2
    return volume


def segment_cached(seg: Segmenter, session: ChatSession, texts: Sequence[str], worker=None):
    """``Segmenter.segment`` on the session's cached image or volume: no image-encoder run.

    Args:
        worker: a :class:`~vlseg.chat.worker.ModelWorker` of ``seg`` to batch the call with
            other sessions' (same answers up to float rounding), or None to call ``seg``.

    Returns:
        One :class:`~vlseg.inference.SegmentationResult` per text (a
        :class:`~vlseg.volume.VolumeResult` for a volume).
    """
    _require_image(session)
    call = seg.segment if worker is None else worker.segment
    if session.is_volume:  # the volume's own spacing (the file's) gives the measurements
        return call(session.encoded, list(texts))
    return call(session.encoded, list(texts), spacing=session.spacing)


def image_embedding(session: ChatSession) -> np.ndarray:
    """The session image's CLIP embedding, L2-normalised: (E,) float32, from the cache (for a
    volume, the normalised mean of its slices' embeddings)."""
    _require_image(session)
    return session.encoded.embedding[0]


def classify_cached(
    seg: Segmenter, session: ChatSession, labels: Sequence[str] | None, templates: Any = None
) -> ClassificationResult:
    """``Segmenter.classify`` on the session's cached image: no image-encoder run (a volume is
    classified by the mean of its slices' embeddings).

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
