"""Segmentation metrics on binary masks: Dice, IoU, HD95 and a referring-segmentation meter.

Conventions:
  * Dice and IoU of an empty prediction against an empty target are 1.0; one empty, the other not,
    is 0.0 (MONAI ``compute_dice(..., ignore_empty=False)`` does the same).
  * ``prec@t`` counts samples with IoU >= t, as in the LAVT / RefCOCO evaluation code
    (CRIS uses IoU > t; the two differ only when an IoU equals t exactly).
  * HD95 follows MONAI ``compute_hausdorff_distance(percentile=95)``: surfaces are the mask pixels
    removed by one binary erosion, distances are exact Euclidean (scaled by ``spacing``), and the
    result is the larger of the two directed 95th percentiles (linear interpolation). When either
    mask is empty the result is NaN, as MONAI's with ``percentile`` set (its plain Hausdorff gives
    inf there), and ``SegmentationMeter`` leaves such samples out of the HD95 mean.
  * Units. :func:`hd95` returns the units of its ``spacing`` (mm for ``(row_mm, col_mm)``),
    pixels without one. ``SegmentationMeter`` keeps the two apart: ``hd95`` is always in pixels
    (every sample), ``hd95_mm`` in millimetres over the samples whose spacing is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from vlseg.metrics._convert import ArrayLike, binarize

__all__ = ["SegmentationMeter", "dice", "hd95", "iou"]


def _check_pair(pred: np.ndarray, target: np.ndarray, ndims: tuple[int, ...], what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}; resize one")
    if pred.ndim not in ndims:
        raise ValueError(f"expected {what}, got a mask with shape {pred.shape}")


def _overlap(pred: ArrayLike, target: ArrayLike, threshold: float) -> tuple[int, int, int]:
    p = binarize(pred, "pred", threshold)
    t = binarize(target, "target")
    _check_pair(p, t, (2, 3), "one HxW or DxHxW mask")
    return int((p & t).sum()), int(p.sum()), int(t.sum())


def dice(pred: ArrayLike, target: ArrayLike, *, threshold: float = 0.5) -> float:
    """Dice coefficient ``2|P & T| / (|P| + |T|)`` of one sample.

    Args:
        pred: HxW (or DxHxW) mask: bool, {0, 1}, or float probabilities in [0, 1].
        target: binary mask with the same shape as ``pred``.
        threshold: probabilities strictly above it count as foreground.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    inter, p, t = _overlap(pred, target, threshold)
    return 1.0 if p + t == 0 else 2.0 * inter / (p + t)


def iou(pred: ArrayLike, target: ArrayLike, *, threshold: float = 0.5) -> float:
    """Intersection over union ``|P & T| / |P | T|`` of one sample.

    Args:
        pred: HxW (or DxHxW) mask: bool, {0, 1}, or float probabilities in [0, 1].
        target: binary mask with the same shape as ``pred``.
        threshold: probabilities strictly above it count as foreground.

    Returns:
        IoU in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    inter, p, t = _overlap(pred, target, threshold)
    union = p + t - inter
    return 1.0 if union == 0 else inter / union


def _surface(mask: np.ndarray) -> np.ndarray:
    # Pixels removed by one erosion with the cross-shaped structure; outside the image counts as
    # background, so foreground on the image border is surface (as MONAI's zero-padded crop).
    return mask & ~ndimage.binary_erosion(mask)


def _directed_hd95(src: np.ndarray, dst: np.ndarray, spacing: Sequence[float]) -> float:
    # Euclidean distance from every src surface pixel to the nearest dst surface pixel.
    dist = ndimage.distance_transform_edt(~dst, sampling=spacing)
    return float(np.percentile(dist[src], 95))


def hd95(
    pred: ArrayLike,
    target: ArrayLike,
    spacing: float | Sequence[float] | None = None,
    *,
    threshold: float = 0.5,
) -> float:
    """95th-percentile symmetric Hausdorff distance between the mask surfaces of one sample.

    Matches ``monai.metrics.compute_hausdorff_distance(p, t, include_background=True,
    percentile=95, spacing=spacing)`` whenever both masks are non-empty.

    Args:
        pred: HxW (or DxHxW) mask: bool, {0, 1}, or float probabilities in [0, 1].
        target: binary mask with the same shape as ``pred``.
        spacing: physical pixel size per axis, e.g. ``(sy, sx)`` in mm; one number applies to
            every axis; ``None`` means 1.
        threshold: probabilities strictly above it count as foreground.

    Returns:
        Distance >= 0 in units of ``spacing`` (pixels by default); NaN when either mask is empty.
    """
    p = binarize(pred, "pred", threshold)
    t = binarize(target, "target")
    _check_pair(p, t, (2, 3), "one HxW or DxHxW mask")
    sp = _check_spacing((1.0,) * p.ndim if spacing is None else spacing, p.ndim)
    if not p.any() or not t.any():
        return float("nan")
    return _symmetric_hd95(*_surfaces(p, t), sp)


def _check_spacing(spacing: float | Sequence[float], ndim: int) -> np.ndarray:
    """One positive finite size per axis (a single number applies to every axis)."""
    try:
        sp = np.asarray(spacing, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be numbers (one per axis), got {spacing!r}") from None
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim or not (np.isfinite(sp).all() and sp.min() > 0):
        raise ValueError(f"spacing must be {ndim} positive numbers (one per axis), got {spacing}")
    return sp


def _surfaces(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Crop to the union's bounding box: same distances, far less work for small lesions.
    box = tuple(slice(idx.min(), idx.max() + 1) for idx in np.nonzero(p | t))
    return _surface(p[box]), _surface(t[box])


def _symmetric_hd95(surf_p: np.ndarray, surf_t: np.ndarray, sp: np.ndarray) -> float:
    return max(_directed_hd95(surf_p, surf_t, sp), _directed_hd95(surf_t, surf_p, sp))


class SegmentationMeter:
    """Accumulates per-sample overlap statistics for referring segmentation.

    HD95 is kept in two units: ``hd95`` in pixels for every sample, and ``hd95_mm`` in
    millimetres for the samples whose pixel spacing is known (given to :meth:`update`, else the
    meter's default ``spacing``). Samples of different resolutions are only comparable in mm.

    Args:
        threshold: probabilities strictly above it count as foreground.
        spacing: default ``(row_mm, col_mm)`` pixel size (or one number for square pixels) for
            samples that :meth:`update` gives none; None: unknown (no ``hd95_mm`` for them).
        with_hd95: compute HD95 (the slowest part; turn off for quick validation loops).
        prec_thresholds: IoU thresholds for the ``prec@t`` entries, each in [0, 1].

    Example:
        >>> meter = SegmentationMeter()
        >>> meter.update(probs, masks, spacing=batch["spacing"])  # BxHxW or HxW
        >>> meter.compute()["oIoU"], meter.compute()["hd95_mm"]
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        spacing: float | Sequence[float] | None = None,
        with_hd95: bool = True,
        prec_thresholds: Sequence[float] = (0.5, 0.7, 0.9),
    ) -> None:
        if not all(0.0 <= t <= 1.0 for t in prec_thresholds):
            raise ValueError(f"prec_thresholds must lie in [0, 1], got {tuple(prec_thresholds)}")
        self.threshold = threshold
        self.spacing = None if spacing is None else tuple(_check_spacing(spacing, 2).tolist())
        self.with_hd95 = with_hd95
        self.prec_thresholds = tuple(prec_thresholds)
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._inter: list[int] = []
        self._union: list[int] = []
        self._dice: list[float] = []
        self._hd95: list[float] = []  # pixels, every sample (NaN: a mask is empty)
        self._hd95_mm: list[float] = []  # mm, samples with a known spacing only

    def update(
        self,
        pred: ArrayLike,
        target: ArrayLike,
        *,
        spacing: float | Sequence[float] | Sequence[Sequence[float] | None] | None = None,
    ) -> None:
        """Add one HxW sample or a BxHxW batch (pred may hold probabilities in [0, 1]).

        Args:
            pred: HxW or BxHxW mask or probabilities.
            target: binary mask(s) of the same shape.
            spacing: pixel size in mm for HD95: one ``(row_mm, col_mm)`` (or one number) for
                every sample, or one entry per sample, each ``(row_mm, col_mm)`` or None (as in
                a :func:`vlseg.data.collate` batch's ``"spacing"``). None entries, and None
                here, fall back to the meter's ``spacing``.
        """
        p = binarize(pred, "pred", self.threshold)
        t = binarize(target, "target")
        _check_pair(p, t, (2, 3), "an HxW sample or a BxHxW batch")
        if p.ndim == 2:
            p, t = p[None], t[None]
        # Checked before any state changes, so a bad spacing leaves the meter as it was.
        spacings = self._per_sample(spacing, len(p)) if self.with_hd95 else []
        inter = (p & t).sum(axis=(1, 2))  # (B,)
        total = p.sum(axis=(1, 2)) + t.sum(axis=(1, 2))
        self._inter += inter.tolist()
        self._union += (total - inter).tolist()
        self._dice += np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1)).tolist()
        for pi, ti, si in zip(p, t, spacings, strict=False):  # no spacings: HD95 is off
            px, mm = _hd95_px_mm(pi, ti, si)
            self._hd95.append(px)
            if si is not None:
                self._hd95_mm.append(mm)

    def _per_sample(self, spacing: Any, n: int) -> list[np.ndarray | None]:
        default = None if self.spacing is None else np.asarray(self.spacing)
        if spacing is None:
            return [default] * n
        if np.isscalar(spacing) or all(np.isscalar(v) for v in spacing):
            return [_check_spacing(spacing, 2)] * n  # one spacing for the whole batch
        if len(spacing) != n:
            raise ValueError(
                f"spacing has {len(spacing)} entries for a batch of {n}; give one (row_mm, "
                "col_mm) for all samples or one per sample"
            )
        return [default if s is None else _check_spacing(s, 2) for s in spacing]

    def compute(self) -> dict[str, float]:
        """Summarise every sample seen since the last reset.

        Returns:
            ``n`` (samples), ``dice`` (mean Dice), ``mIoU`` (mean per-sample IoU), ``oIoU``
            (summed intersections / summed unions, 1.0 if every union is 0), ``prec@t`` (fraction
            with IoU >= t), and with HD95 on: ``hd95`` in pixels (mean over samples where both
            masks are non-empty, NaN if none) with ``hd95_n`` (how many samples that mean
            covers), and ``hd95_mm`` in millimetres (the same mean over the samples whose
            spacing is known, NaN if none) with ``hd95_mm_n``.
        """
        if not self._inter:
            raise RuntimeError("SegmentationMeter has no samples; call update(pred, target) first")
        inter, union = np.asarray(self._inter), np.asarray(self._union)
        ious = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
        out = {
            "n": float(len(ious)),
            "dice": float(np.mean(self._dice)),
            "mIoU": float(ious.mean()),
            "oIoU": float(inter.sum() / union.sum()) if union.sum() > 0 else 1.0,
        }
        for t in self.prec_thresholds:
            out[f"prec@{t:g}"] = float((ious >= t).mean())
        if self.with_hd95:
            for key, values in (("hd95", self._hd95), ("hd95_mm", self._hd95_mm)):
                hd = np.asarray(values, dtype=np.float64)
                defined = hd[~np.isnan(hd)]
                out[key] = float(defined.mean()) if defined.size else float("nan")
                out[f"{key}_n"] = float(defined.size)
        return out


def _hd95_px_mm(p: np.ndarray, t: np.ndarray, spacing: np.ndarray | None) -> tuple[float, float]:
    """HD95 of one HxW pair in pixels and in mm (NaN when ``spacing`` is None or a mask empty)."""
    if not p.any() or not t.any():
        return float("nan"), float("nan")
    surf_p, surf_t = _surfaces(p, t)
    px = _symmetric_hd95(surf_p, surf_t, np.ones(2))
    if spacing is None:
        return px, float("nan")
    if spacing[0] == spacing[1]:  # square pixels: every distance scales by the same factor
        return px, px * float(spacing[0])
    return px, _symmetric_hd95(surf_p, surf_t, spacing)
