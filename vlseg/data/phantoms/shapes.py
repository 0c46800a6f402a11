"""Geometry and texture primitives shared by the phantom renderers.

Coordinates are normalised: ``x`` runs left to right and ``y`` top to bottom, both in [-1, 1]
across the image, so a phantom is described independently of its pixel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Grid:
    """Normalised pixel-centre coordinates of a square image.

    Attributes:
        size: side length in pixels.
        x: HxW array of x coordinates in [-1, 1] (left to right).
        y: HxW array of y coordinates in [-1, 1] (top to bottom).
    """

    size: int
    x: np.ndarray
    y: np.ndarray

    @classmethod
    def square(cls, size: int) -> Grid:
        c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
        y, x = np.meshgrid(c, c, indexing="ij")
        return cls(size=size, x=x, y=y)

    def px(self, length: float) -> float:
        """Convert a normalised length to pixels."""
        return length * self.size / 2.0


def blob(
    grid: Grid,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    *,
    angle: float = 0.0,
    wobble: np.ndarray | None = None,
    phases: np.ndarray | None = None,
) -> np.ndarray:
    """A star-shaped region: an ellipse whose radius is modulated by angular harmonics.

    The boundary radius is ``1 + sum_k wobble[k] * cos((k + 2) * theta + phases[k])`` in the
    ellipse's own frame, so ``wobble`` controls border irregularity (k=2 gives asymmetry, higher
    harmonics a ragged border).

    Args:
        grid: the image grid.
        cx, cy: centre in normalised coordinates.
        rx, ry: semi-axes in normalised units.
        angle: rotation in radians.
        wobble: amplitudes of harmonics 2, 3, ... (each typically 0-0.2).
        phases: their phases; random-free default of zeros.

    Returns:
        HxW bool mask.
    """
    ca, sa = np.cos(angle), np.sin(angle)
    out = np.zeros(grid.x.shape, dtype=bool)
    # Only the pixels that can be inside are evaluated: every operation below is elementwise, so
    # the crop gives the same bits as the whole grid, several times faster for small shapes.
    reach = 1.0 + (float(np.abs(wobble).sum()) if wobble is not None and len(wobble) else 0.0)
    half_x = reach * float(np.hypot(rx * ca, ry * sa))
    half_y = reach * float(np.hypot(rx * sa, ry * ca))
    rows, cols = _span(grid.y[:, 0], cy, half_y), _span(grid.x[0], cx, half_x)
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return out
    dx, dy = grid.x[rows, cols] - cx, grid.y[rows, cols] - cy
    u = (ca * dx + sa * dy) / rx
    v = (-sa * dx + ca * dy) / ry
    r = np.sqrt(u * u + v * v)
    boundary = np.ones_like(r)
    if wobble is not None and len(wobble):
        theta = np.arctan2(v, u)
        ph = np.zeros(len(wobble)) if phases is None else phases
        for k, (amp, phase) in enumerate(zip(wobble, ph, strict=True)):
            boundary = boundary + amp * np.cos((k + 2) * theta + phase)
    out[rows, cols] = r < boundary
    return out


def _span(axis: np.ndarray, centre: float, half: float) -> slice:
    """Indices of the increasing coordinates ``axis`` within ``centre +- half``, with a margin of
    two pixels (so rounding never cuts a pixel that the full-grid test would keep)."""
    if not np.isfinite(half) or not np.isfinite(centre):
        return slice(0, len(axis))
    lo = int(np.searchsorted(axis, centre - half, side="left")) - 2
    hi = int(np.searchsorted(axis, centre + half, side="right")) + 2
    return slice(max(lo, 0), min(hi, len(axis)))


def random_blob(
    grid: Grid,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    *,
    irregularity: float,
    harmonics: int = 5,
    angle: float | None = None,
) -> np.ndarray:
    """`blob` with random harmonics whose amplitude decays with order, scaled by irregularity."""
    decay = 1.0 / np.arange(1, harmonics + 1) ** 0.7
    wobble = irregularity * decay * rng.uniform(0.3, 1.0, harmonics)
    phases = rng.uniform(0, 2 * np.pi, harmonics)
    if angle is None:
        angle = rng.uniform(0, np.pi)
    return blob(grid, cx, cy, rx, ry, angle=angle, wobble=wobble, phases=phases)


def smooth_noise(
    rng: np.random.Generator, size: int, sigma: float, *, channels: int = 0
) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation.

    Args:
        rng: random generator.
        size: side length in pixels.
        sigma: correlation length in pixels.
        channels: 0 for an HxW field, otherwise an HxWxC field with independent channels.
    """
    shape = (size, size) if channels == 0 else (size, size, channels)
    field = rng.standard_normal(shape).astype(np.float32)
    sig = (sigma, sigma) if channels == 0 else (sigma, sigma, 0)
    field = ndimage.gaussian_filter(field, sig, mode="wrap")
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def quad_bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 24) -> list[tuple]:
    """Points along a quadratic Bezier curve, as (x, y) tuples for PIL drawing."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    return [tuple(p) for p in pts.tolist()]


def soft_edge(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A [0, 1] alpha map: the mask with its border blurred by ``sigma`` pixels."""
    if sigma <= 0:
        return mask.astype(np.float32)
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float32), sigma), 0.0, 1.0)


def centroid(mask: np.ndarray, grid: Grid) -> tuple[float, float]:
    """Centroid (x, y) of a mask in normalised coordinates."""
    return float(grid.x[mask].mean()), float(grid.y[mask].mean())
