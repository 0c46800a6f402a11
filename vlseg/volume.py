"""Volumes: every slice encoded once, any number of prompts answered in 3-D, with clinical
measurements (volume in mL, RECIST-style diameters, lesion count, slices with findings).

A volume is segmented slice by slice by the 2-D model (the slices in the file's order, each in
display orientation, so "left kidney" means what it means on a 2-D image) and the answers are
put back together in 3-D:

- **presence**: each slice gets its calibrated presence score; the volume's score asks for two
  adjacent slices to agree (``max_k min(s[k], s[k+1])``), so one slice's false alarm does not
  make a finding. A one-slice volume uses its score as is.
- **mask**: on slices whose own score reaches the threshold, pixels whose probability does; then
  3-D connected components (26-connectivity), removal of specks smaller than
  ``min_component_mm3`` (or ``min_component_voxels`` when the spacing is unknown), and of
  components that lie on a single slice although they are at least two slice spacings across
  (a compact structure that wide would show on the next slice: on 3-D phantoms every such
  component was a false alarm, and every true finding spanned two slices or more).
- **measurements**: ``volume_ml`` (voxels x voxel volume), per component volume, and for the
  largest components the longest axial diameter and the longest diameter perpendicular to it on
  the same slice (RECIST 1.1), measured on the pixel grid in mm.

The image encoder runs once per slice, in batches (``encode_volume``); every later prompt on the
volume only runs the decoder (``segment_volume``), and a prompt asked again on the same volume
reuses its decoder outputs (kept at the decoder's resolution, a few hundred KB per prompt).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .data.transforms import normalize
from .data.volume_io import Volume
from .inference import EncodedImage, decode, encode, mask_probabilities
from .modeling.vlseg import upsample_logits
from .refine import guide_of, refine_probabilities
from .serving import ServingConfig
from .vocabulary import unfamiliar, ungrounded

__all__ = [
    "EncodedVolume",
    "VolumeResult",
    "agreeing_score",
    "axial_diameters",
    "encode_volume",
    "measure_components",
    "segment_volume",
]

STRUCTURE_3D = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


@dataclass
class EncodedVolume:
    """A volume after the image encoder: what every prompt on it reuses.

    Attributes:
        volume: the source volume (values, spacing, the file's shape and affine).
        chunks: the encoded slices, in order, in batches (each an ``EncodedImage``).
        ood_score: the volume's out-of-domain score (median over slices), or None.
        guide: S x H x W uint8, the slices as the encoder saw them before resizing (the guide
            of the edge-aware refinement, ``serving.refine``), or None.
    """

    volume: Volume
    chunks: list[EncodedImage]
    ood_score: float | None = None
    guide: np.ndarray | None = field(default=None, repr=False)
    # decoder outputs of the prompts asked on this volume, most recent last: text ->
    # (presence logits S, [logits per chunk]); small (S x 1 x h x w at the decoder's size)
    answers: OrderedDict = field(default_factory=OrderedDict, repr=False)
    max_answers: int = 16
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.volume)

    @property
    def embedding(self) -> np.ndarray:
        """The volume's L2-normalised CLIP embedding: the mean of its slices' embeddings,
        normalised (1 x E), for zero-shot classification and retrieval of a whole volume."""
        return _mean_direction([c.embedding for c in self.chunks])

    @property
    def zeroshot_embedding(self) -> np.ndarray:
        """As :attr:`embedding`, from the zero-shot head's slice embeddings
        (``EncodedImage.zeroshot_embedding``)."""
        return _mean_direction([c.zeroshot_embedding for c in self.chunks])

    @property
    def ood_scores(self) -> list[float] | None:
        """Each slice's out-of-domain score, or None without an out-of-domain fit."""
        if any(c.ood_scores is None for c in self.chunks):
            return None
        return [s for c in self.chunks for s in c.ood_scores]  # type: ignore[union-attr]


@dataclass
class VolumeResult:
    """The answer to one prompt on a volume.

    Attributes:
        text: the prompt.
        mask: bool, the file's array shape and voxel order (``Volume.shape``): the finding when
            ``verdict`` is "present", the tentative one for "unsure", else empty.
        probs: float32 per-voxel probability, same shape. Computed on first access (it costs
            an upsampling and a sigmoid over every voxel, ~0.1 s for 100 slices of 256 x 256,
            that an answer read for its mask and measurements never needs).
        score: the volume's calibrated presence probability (two adjacent slices agreeing).
        verdict: "present", "absent", "unsure" or "out-of-domain" (as for a 2-D result).
        volume_ml: volume of ``mask`` in millilitres (None when the spacing is unknown).
        voxels: voxels in ``mask``.
        n_components: 3-D connected components (26-connectivity) of ``mask``.
        component_volumes_ml: volume of each component, largest first (voxel counts when the
            spacing is unknown).
        diameters_mm: (longest axial diameter, longest diameter perpendicular to it on the same
            slice) of each of the largest components (up to ``max_measured``), in mm (pixels
            when the spacing is unknown), largest component first.
        diameter_slices: the slice where each component's longest axial diameter was measured.
        slices: indices of the slices holding the finding, along the volume's slice axis in
            the file's order.
        slice_scores: each slice's calibrated presence probability.
        spacing: (slice_mm, row_mm, col_mm) used for the measurements, or None.
        unfamiliar: words of ``text`` the model's training prompts never used.
        ood_score: the volume's out-of-domain score, or None.
        note: why a prompt naming one instance ("the most superior lesion") got the whole
            finding instead (``vlseg.referring``); None otherwise.
    """

    text: str
    mask: np.ndarray
    probs: np.ndarray
    score: float
    verdict: str
    volume_ml: float | None
    voxels: int
    n_components: int
    component_volumes_ml: list[float]
    diameters_mm: list[tuple[float, float]]
    diameter_slices: list[int]
    slices: list[int]
    slice_scores: np.ndarray
    spacing: tuple[float, float, float] | None
    unfamiliar: list[str] = field(default_factory=list)
    ood_score: float | None = None
    note: str | None = None

    @property
    def present(self) -> bool:
        return self.verdict == "present"

    @property
    def uncertainty(self) -> np.ndarray:
        """Binary entropy (bits) of ``probs``: 1 where a voxel's probability is 0.5."""
        p = np.clip(self.probs.astype(np.float64), 1e-7, 1 - 1e-7)
        return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).astype(np.float32)

    def summary(self) -> str:
        """One line for people: verdict, volume, diameters, count, slices (and the note, when
        set)."""
        note = f" [{self.note}]" if self.note else ""
        if not self.present:
            word = {"absent": "not found"}.get(self.verdict, self.verdict)
            return f"{self.text}: {word} (score {self.score:.2f}){note}"
        unit = "mm" if self.spacing else "px"
        vol = f"{self.volume_ml:.1f} mL" if self.volume_ml is not None else f"{self.voxels} voxels"
        parts = [f"{self.text}: present, {vol}"]
        if self.diameters_mm:
            long, short = self.diameters_mm[0]
            parts.append(f"largest {long:.1f} x {short:.1f} {unit}")
        parts.append(f"{self.n_components} component(s)")
        parts.append(f"slices {_ranges(self.slices)}")
        return ", ".join(parts) + f" (score {self.score:.2f}){note}"

    def __repr__(self) -> str:
        return f"VolumeResult({self.summary()})"


def _get_probs(self: VolumeResult) -> np.ndarray:
    value = self.__dict__["_probs"]
    if callable(value):  # computed once, on first use
        value = value()
        self.__dict__["_probs"] = value
    return value


def _set_probs(self: VolumeResult, value) -> None:
    """An array, or a function of no arguments that returns it (called on first access)."""
    self.__dict__["_probs"] = value


# ``probs`` stays a dataclass field (constructor argument, ``dataclasses.replace``) backed by a
# property, so that it can be given as a function and computed only when read.
VolumeResult.probs = property(_get_probs, _set_probs, doc="float32 per-voxel probability")


def _mean_direction(parts: list[np.ndarray]) -> np.ndarray:
    """1 x E: the L2-normalised mean of the rows of ``parts`` (unit vectors)."""
    emb = np.concatenate(parts).mean(0, keepdims=True)
    return (emb / max(float(np.linalg.norm(emb)), 1e-12)).astype(np.float32)


def _ranges(idx: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    out, start = [], None
    for i, k in enumerate(idx):
        if start is None:
            start = k
        if i + 1 == len(idx) or idx[i + 1] != k + 1:
            out.append(f"{start}" if start == k else f"{start}-{k}")
            start = None
    return ", ".join(out) if out else "none"


# ----------------------------------------------------------------------------------------
# encoding


def slices_to_pixels(
    slices_u8: np.ndarray, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """n x H x W uint8 grey slices -> n x 3 x S x S normalised model input, exactly as the 2-D
    path prepares a grey image (replicated to three channels, antialiased bicubic resize)."""
    x = torch.from_numpy(np.ascontiguousarray(slices_u8)).float().div_(255.0)[:, None]
    if tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=True
        ).clamp_(0.0, 1.0)
    return normalize(x.expand(-1, 3, -1, -1), mean, std)


@torch.no_grad()
def encode_volume(
    model,
    volume: Volume,
    *,
    image_size: int,
    window: tuple[float, float] | None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
    ood=None,
    progress: Callable[[int, int], None] | None = None,
) -> EncodedVolume:
    """Run the image encoder once on every slice of ``volume``, ``batch_size`` slices at a time.

    Args:
        model: a ``VLSegModel`` in eval mode.
        volume: from :func:`vlseg.data.volume_io.read_volume`.
        image_size: the model's square input size.
        window: the model's CT window (level, width), applied to Hounsfield-unit volumes.
        ood: an ``OODDetector``; the volume then gets a score (median over slices).
        progress: called as ``progress(done_slices, total_slices)`` after each batch.
    """
    u8 = volume.to_uint8(window)
    n, (h, w) = len(volume), u8.shape[1:]
    sp = volume.spacing
    spacing2 = None if sp is None else (float(sp[1]), float(sp[2]))
    vis = model.vision
    chunks = []
    for start in range(0, n, batch_size):
        part = u8[start : start + batch_size]
        pixels = slices_to_pixels(part, image_size, vis.mean, vis.std)
        pixels = pixels.to(device).contiguous(memory_format=memory_format)
        enc = encode(model, pixels, [(h, w)] * len(part), [spacing2] * len(part), ood=ood)
        chunks.append(enc)
        if progress is not None:
            progress(min(start + batch_size, n), n)
    out = EncodedVolume(volume, chunks, guide=u8)
    scores = out.ood_scores
    out.ood_score = None if scores is None else float(np.median(scores))
    return out


# ----------------------------------------------------------------------------------------
# answers


Z_SMOOTHING = 0.25  # neighbour weight when slices are no thicker than a decoder cell


def z_smoothing_weight(
    spacing: tuple[float, float, float] | None, height: int, decoder_height: int
) -> float:
    """The neighbour weight for :func:`smooth_over_slices`: ``Z_SMOOTHING`` while the slices
    are no thicker than one decoder output cell is wide in-plane (row spacing x height /
    decoder rows; ~12 mm for a 256 px slice of 1.5 mm pixels through phantom-tiny), less for
    thicker slices (so the smoothing never reaches further in z than the decoder's own
    in-plane resolution), none when the spacing is unknown."""
    if spacing is None:
        return 0.0
    cell_mm = float(spacing[1]) * height / max(decoder_height, 1)
    return Z_SMOOTHING * min(1.0, cell_mm / float(spacing[0]))


def smooth_over_slices(logits: torch.Tensor, weight: float) -> torch.Tensor:
    """S x 1 x h x w mask logits -> each slice's own with ``1 - 2 * weight`` plus each
    neighbour's with ``weight`` (end slices: their one neighbour), a training-free 2.5-D
    context: one slice's noise is damped where its neighbours disagree. On the 3-D phantoms
    (test + val, 10 volumes) it took the hepatic-lesion volume error from 13.8% to 8.4% (median)
    and lesion Dice from 0.857 to 0.862; organs moved by < 0.01 Dice."""
    if logits.shape[0] < 2 or weight <= 0:
        return logits
    up = torch.cat([logits[:1], logits[:-1]])  # previous slice (the first repeats itself)
    down = torch.cat([logits[1:], logits[-1:]])  # next slice
    # an end slice has one neighbour: its own logits take the missing one's share
    return (1 - 2 * weight) * logits + weight * up + weight * down


def agreeing_score(scores: np.ndarray) -> float:
    """The volume's presence: the best pair of adjacent slices, scored by its weaker slice
    (``max_k min(s[k], s[k+1])``), so a finding needs two adjacent slices; a one-slice volume
    uses its score as is."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return 0.0
    if s.size == 1:
        return float(s[0])
    return float(np.max(np.minimum(s[:-1], s[1:])))


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box (one slice per axis) holding every True voxel of ``mask``; an empty
    box at the origin when there is none."""
    box: list[slice] = []
    view = mask
    for axis in range(mask.ndim):  # each axis on the part the earlier ones left (cheaper)
        hit = np.flatnonzero(view.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return tuple(slice(0, 0) for _ in range(mask.ndim))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
        view = mask[tuple(box)]
    return tuple(box)


def remove_specks(mask: np.ndarray, min_voxels: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop 3-D components smaller than ``min_voxels``; returns (mask, labels, n_components)
    with labels renumbered 1..n by decreasing size."""
    labels, n = ndimage.label(mask, structure=STRUCTURE_3D)
    if n == 0:
        return mask, labels, 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = [i + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_voxels]
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    labels = lut[labels]
    return labels > 0, labels, len(order)


def drop_flat_components(
    mask: np.ndarray, labels: np.ndarray, n: int, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop components that lie on one slice although they are at least two slice spacings
    across: a compact structure that wide would show on the next slice too, so such a flat
    component is a one-slice false alarm. Smaller ones (a lesion thinner than the slices) stay.

    ``labels`` numbered 1..n by decreasing size; returns them renumbered the same way.
    """
    if n == 0:
        return mask, labels, 0
    pixel_mm2 = float(spacing[1]) * float(spacing[2])
    drop = []
    for comp, box in enumerate(ndimage.find_objects(labels), 1):
        if box is None or box[0].stop - box[0].start > 1:
            continue
        area_mm2 = float((labels[box] == comp).sum()) * pixel_mm2
        if 2.0 * math.sqrt(area_mm2 / math.pi) >= 2.0 * float(spacing[0]):
            drop.append(comp)
    if not drop:
        return mask, labels, n
    keep = np.ones(n + 1, dtype=bool)
    keep[0] = False
    keep[drop] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    labels = lut[labels]
    return labels > 0, labels, int(keep.sum())


def axial_diameters(
    mask2d: np.ndarray, spacing: tuple[float, float] | None = None
) -> tuple[float, float]:
    """RECIST-style diameters of a 2-D region: the longest diameter and the longest chord
    perpendicular to it, in mm (pixels when ``spacing`` is None).

    Measured on the pixel squares (their corners), so a one-pixel region measures one pixel
    across and anisotropic pixels are handled.
    """
    rows, cols = np.nonzero(mask2d)
    if rows.size == 0:
        return 0.0, 0.0
    sy, sx = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    corners = np.concatenate(
        [np.stack([(rows + dr) * sy, (cols + dc) * sx], 1) for dr in (0, 1) for dc in (0, 1)]
    )
    try:
        hull = corners[ConvexHull(corners).vertices]
    except QhullError:  # collinear corners cannot happen for squares, but stay safe
        hull = corners
    d = np.linalg.norm(hull[:, None] - hull[None], axis=-1)
    long = float(d.max())
    centres = np.stack([(rows + 0.5) * sy, (cols + 0.5) * sx], 1)
    # Several hull pairs can tie for the longest diameter (a square's two diagonals): take the
    # one with the longest perpendicular, so the answer does not depend on pixel order.
    pairs = np.argwhere(np.triu(d >= long - 1e-6 * max(long, 1.0), 1))
    short = max(_perpendicular(hull[j] - hull[i], long, centres, sy, sx) for i, j in pairs)
    return long, min(short, long)


def _perpendicular(axis, long, centres, sy, sx) -> float:
    """The longest chord perpendicular to ``axis``: for strips across it, the extent of the
    pixels in each strip along the perpendicular."""
    u = axis / max(long, 1e-12)
    v = np.array([-u[1], u[0]])
    along = centres @ u
    across = centres @ v
    half = 0.5 * (abs(v[0]) * sy + abs(v[1]) * sx)  # a pixel's half extent along v
    step = min(sy, sx)
    # + 1e-9: pixels on a strip boundary fall in the same strip whatever float noise the
    # spacing carries (DICOM slice positions give 3.11869999999999 for 3.1187)
    bins = np.floor((along - along.min()) / step + 1e-9).astype(np.int64)
    lo = np.full(bins.max() + 1, np.inf)
    hi = np.full(bins.max() + 1, -np.inf)
    np.minimum.at(lo, bins, across)
    np.maximum.at(hi, bins, across)
    return float(np.max(hi - lo)) + 2 * half


def measure_components(
    labels: np.ndarray,
    n: int,
    spacing: tuple[float, float, float] | None,
    max_measured: int = 5,
) -> tuple[list[float], list[tuple[float, float]], list[int]]:
    """Per-component volume (mL, or voxels without spacing), largest first, and RECIST-style
    diameters with the slice they were measured on for the ``max_measured`` largest.

    ``labels``: S x H x W, components numbered 1..n by decreasing size (``remove_specks``).
    """
    if n == 0:
        return [], [], []
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    voxel_ml = None if spacing is None else float(np.prod(spacing)) / 1000.0
    volumes = [float(c) * voxel_ml if voxel_ml is not None else float(c) for c in counts]
    sp2 = None if spacing is None else (float(spacing[1]), float(spacing[2]))
    diameters, where = [], []
    boxes = ndimage.find_objects(labels)
    for comp in range(1, min(n, max_measured) + 1):
        box = boxes[comp - 1]
        best, best_k, best_key = (0.0, 0.0), box[0].start, None
        mid = (box[0].start + box[0].stop - 1) / 2.0
        for k in range(box[0].start, box[0].stop):
            region = labels[k, box[1], box[2]] == comp
            if not region.any():
                continue
            d = axial_diameters(region, sp2)
            # the longest axis; on a tie the longer perpendicular, then the slice nearest the
            # component's middle: the same slice whichever way the file orders its slices
            key = (round(d[0], 6), round(d[1], 6), -abs(k - mid))
            if best_key is None or key > best_key:
                best, best_k, best_key = d, k, key
        diameters.append(best)
        where.append(int(best_k))
    return volumes, diameters, where


@torch.no_grad()
def segment_volume(
    model,
    encoded: EncodedVolume,
    text: str,
    serving: ServingConfig,
    *,
    text_cache=None,
    vocabulary: Iterable[str] | None = None,
    min_component_mm3: float = 10.0,
    min_component_voxels: int = 4,
    max_measured: int = 5,
    z_smoothing: float | None = None,
    refine: dict | None = None,
) -> VolumeResult:
    """Answer one prompt on an encoded volume (the decoder only; no image-encoder run).

    Args:
        model: the ``VLSegModel`` that encoded the volume.
        encoded: from :func:`encode_volume`.
        text: the prompt.
        serving: threshold, calibration, unsure band, out-of-domain threshold.
        text_cache: a ``TextCache`` (the prompt's text features are computed once).
        min_component_mm3: components smaller than this are specks and removed (when the
            spacing is known; else ``min_component_voxels``).
        max_measured: how many of the largest components get diameters.
        z_smoothing: weight of each neighbouring slice's mask logits (see
            :func:`smooth_over_slices`); None: :func:`z_smoothing_weight` from the spacing; 0:
            every slice exactly as the 2-D model answers it alone.
        refine: an edge-aware refinement spec (``serving.refine``, :mod:`vlseg.refine`)
            applied to each slice with its own grey levels as guide; None (the default): the
            upsampled probabilities as they are. Volumes are not refined by default: on the 3-D
            phantoms the refinement raised Dice (0.869 -> 0.888) and cut the diameter error
            (1.32 -> 0.84 mm) but shrank every hepatic lesion by a further 3-5% of its volume
            (median volume error 9.2% -> 12.3%), and a volume is asked for its measurements.
    """
    volume = encoded.volume
    n, (h, w) = len(volume), volume.values.shape[1:]
    with encoded._lock:
        cached = encoded.answers.get(text)
        if cached is not None:
            encoded.answers.move_to_end(text)
    if cached is not None:  # asked before on this volume: no decoder run
        raw_t, logits = cached
    else:
        raw, logits = [], []
        for chunk in encoded.chunks:
            k = len(chunk)
            dec = decode(model, chunk, [text] * k, list(range(k)), text_cache=text_cache)
            raw.append(dec.presence.float().cpu())
            logits.append(dec.logits)
        raw_t = torch.cat(raw)
        with encoded._lock:
            encoded.answers[text] = (raw_t, logits)
            while len(encoded.answers) > encoded.max_answers:
                encoded.answers.popitem(last=False)
    sp = volume.spacing
    weight = z_smoothing_weight(sp, h, logits[0].shape[-2]) if z_smoothing is None else z_smoothing
    if weight > 0 and n > 1:
        logits = [smooth_over_slices(torch.cat(logits), weight)]
    thr = serving.threshold
    # probability > thr  <=>  logit > logit(thr): the mask needs no sigmoid over every voxel
    cut = math.log(thr / (1.0 - thr)) if 0.0 < thr < 1.0 else (-math.inf if thr <= 0 else math.inf)
    mask, done = np.empty((n, h, w), dtype=bool), 0
    refined = None
    if refine is not None and encoded.guide is not None:
        # each slice aligned to its own edges, as the same slice given as a 2-D image
        refined = np.empty((n, h, w), dtype=np.float32)
        for chunk_logits in logits:
            k = chunk_logits.shape[0]
            p = mask_probabilities(chunk_logits, (h, w))
            guides = guide_of(encoded.guide[done : done + k])
            p = refine_probabilities(p, guides, chunk_logits.shape[-2:], refine)
            refined[done : done + k] = p.cpu().numpy()
            done += k
        mask = refined > thr
    else:
        for chunk_logits in logits:
            k = chunk_logits.shape[0]
            up = upsample_logits(chunk_logits.float(), (h, w))  # as mask_probabilities resizes
            mask[done : done + k] = (up[:, 0] > cut).cpu().numpy()
            done += k

    def probs() -> np.ndarray:
        if refined is not None:
            return volume.to_stored(refined)
        out, at = np.empty((n, h, w), dtype=np.float32), 0
        for chunk_logits in logits:
            k = chunk_logits.shape[0]
            out[at : at + k] = mask_probabilities(chunk_logits, (h, w)).cpu().numpy()
            at += k
        return volume.to_stored(out)

    slice_scores = torch.sigmoid(serving.calibrate(raw_t)).numpy().astype(np.float32)
    score = agreeing_score(slice_scores)
    mask[slice_scores < thr] = False
    if score < thr:
        mask[:] = False
    if sp is not None:
        min_vox = max(1, int(math.ceil(min_component_mm3 / float(np.prod(sp)))))
    else:
        min_vox = min_component_voxels
    # Components and measurements on the box around the finding only (a kidney's box is a
    # few percent of the volume): the same answer, a fraction of the work.
    box = bounding_box(mask)
    crop, labels, n_comp = remove_specks(mask[box], min_vox)
    if sp is not None and n > 1:
        crop, labels, n_comp = drop_flat_components(crop, labels, n_comp, sp)
    mask[box] = crop
    new_words = unfamiliar(text, vocabulary)
    verdict = serving.verdict(
        score, bool(mask.any()), encoded.ood_score, unfamiliar=ungrounded(text, vocabulary)
    )
    if verdict == "out-of-domain":
        mask[:] = False
        labels[:] = 0
        n_comp = 0
    vols, diam, where = measure_components(labels, n_comp, sp, max_measured)
    where = [k + box[0].start for k in where]
    voxels = int(mask.sum())
    volume_ml = None if sp is None else voxels * float(np.prod(sp)) / 1000.0
    return VolumeResult(
        text=text,
        mask=volume.to_stored(mask),
        probs=probs,
        score=score,
        verdict=verdict,
        volume_ml=volume_ml,
        voxels=voxels,
        n_components=n_comp,
        component_volumes_ml=vols,
        diameters_mm=diam,
        diameter_slices=where,
        slices=[int(k) for k in np.nonzero(mask.any((1, 2)))[0]],
        slice_scores=slice_scores,
        spacing=None if sp is None else tuple(float(v) for v in sp),
        unfamiliar=new_words,
        ood_score=encoded.ood_score,
    )
