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
"""

from __future__ import annotations

from collections.abc import Sequence

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
    if spacing is None:
        spacing = (1.0,) * p.ndim
    sp = np.asarray(spacing, dtype=np.float64).ravel()
    if sp.size == 1:
        sp = np.repeat(sp, p.ndim)
    if sp.size != p.ndim or sp.min() <= 0:
        raise ValueError(f"spacing must be {p.ndim} positive numbers (one per axis), got {spacing}")
    if not p.any() or not t.any():
        return float("nan")
    # Crop to the union's bounding box: same distances, far less work for small lesions.
    box = tuple(slice(idx.min(), idx.max() + 1) for idx in np.nonzero(p | t))
    surf_p, surf_t = _surface(p[box]), _surface(t[box])
    return max(_directed_hd95(surf_p, surf_t, sp), _directed_hd95(surf_t, surf_p, sp))


class SegmentationMeter:
    """Accumulates per-sample overlap statistics for referring segmentation.

    Args:
        threshold: probabilities strictly above it count as foreground.
        spacing: ``(sy, sx)`` pixel size for HD95; ``None`` means 1 (distances in pixels).
        with_hd95: compute HD95 (the slowest part; turn off for quick validation loops).
        prec_thresholds: IoU thresholds for the ``prec@t`` entries, each in [0, 1].

    Example:
        >>> meter = SegmentationMeter()
        >>> meter.update(probs, masks)  # BxHxW or HxW
        >>> meter.compute()["oIoU"]
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
        self.spacing = spacing
        self.with_hd95 = with_hd95
        self.prec_thresholds = tuple(prec_thresholds)
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._inter: list[int] = []
        self._union: list[int] = []
        self._dice: list[float] = []
        self._hd95: list[float] = []

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add one HxW sample or a BxHxW batch (pred may hold probabilities in [0, 1])."""
        p = binarize(pred, "pred", self.threshold)
        t = binarize(target, "target")
        _check_pair(p, t, (2, 3), "an HxW sample or a BxHxW batch")
        if p.ndim == 2:
            p, t = p[None], t[None]
        inter = (p & t).sum(axis=(1, 2))  # (B,)
        total = p.sum(axis=(1, 2)) + t.sum(axis=(1, 2))
        self._inter += inter.tolist()
        self._union += (total - inter).tolist()
        self._dice += np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1)).tolist()
        if self.with_hd95:
            self._hd95 += [hd95(pi, ti, self.spacing) for pi, ti in zip(p, t, strict=True)]

    def compute(self) -> dict[str, float]:
        """Summarise every sample seen since the last reset.

        Returns:
            ``n`` (samples), ``dice`` (mean Dice), ``mIoU`` (mean per-sample IoU), ``oIoU``
            (summed intersections / summed unions, 1.0 if every union is 0), ``prec@t`` (fraction
            with IoU >= t), and with HD95 on, ``hd95`` (mean over samples where both masks are
            non-empty, NaN if none) and ``hd95_n`` (how many samples that mean covers).
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
            hd = np.asarray(self._hd95)
            defined = hd[~np.isnan(hd)]
            out["hd95"] = float(defined.mean()) if defined.size else float("nan")
            out["hd95_n"] = float(defined.size)
        return out
