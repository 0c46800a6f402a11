"""Edge-aware refinement of mask probabilities with the image as guide (guided filter).

The decoder answers on a coarse grid (a quarter of the model's input side: one cell per ~8 px
of a 256 px image through ``phantom-tiny``), so an upsampled mask has rounded, blurred
boundaries that do not follow the image's edges: small lesions, kidneys and thin structures
lose Dice at their rims. The guided filter (He, Sun and Tang, "Guided Image Filtering", ECCV
2010 / TPAMI 2013) fits, in every window, the probability map as a linear function of the
image's grey levels: where the image has an edge inside the window the refined map steps with
it; where the image is flat the map is just smoothed. It needs no training and works at any
image size (the window is given in decoder cells, so it scales with the image).

Measured on ``phantom-tiny`` (docs/model.md "Edge-aware refinement"): chosen on the classic
phantoms' ``val`` split, then reported once on ``test`` and the held-out renderer family.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT = {"method": "guided", "radius": 0.25, "eps": 1e-3}
METHODS = ("guided",)


def check_refine(spec: dict[str, Any] | None, where: str = "serving refine") -> dict | None:
    """Validate a refinement spec (None: no refinement); returns it with float values."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("method") not in METHODS:
        raise ValueError(
            f"{where} must be null or {{method: guided, radius: R, eps: E}}, got {spec!r}"
        )
    unknown = sorted(set(spec) - {"method", "radius", "eps"})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid: method, radius, eps")
    radius = float(spec.get("radius", DEFAULT["radius"]))
    eps = float(spec.get("eps", DEFAULT["eps"]))
    if not (radius > 0 and eps > 0 and np.isfinite(radius) and np.isfinite(eps)):
        raise ValueError(f"{where}: radius (decoder cells) and eps must be > 0, got {spec!r}")
    return {"method": "guided", "radius": radius, "eps": eps}


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, windows cut at the border (separable: O(r) per pixel)."""
    k = 2 * r + 1
    x = F.avg_pool2d(x, (k, 1), stride=1, padding=(r, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, k), stride=1, padding=(0, r), count_include_pad=False)


def guide_of(rgb: np.ndarray) -> torch.Tensor:
    """Float32 guide in [0, 1] from uint8 pixels: H x W x 3 (the mean of the channels) or
    B x H x W grey slices."""
    a = np.asarray(rgb)
    grey = a.mean(-1, dtype=np.float32) if a.ndim == 3 and a.shape[-1] == 3 else a
    return torch.from_numpy(np.multiply(grey, 1.0 / 255.0, dtype=np.float32))


def radius_px(size: tuple[int, int], decoder_size: tuple[int, int], cells: float) -> int:
    """The filter radius in image pixels: ``cells`` decoder cells at this image size."""
    cell = max(size[0] / max(decoder_size[0], 1), size[1] / max(decoder_size[1], 1))
    return max(1, int(round(cells * cell)))


def guided_filter(
    guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float, step: int = 1
) -> torch.Tensor:
    """He et al.'s guided filter with a grey guide.

    Args:
        guide: H x W float image in [0, 1].
        src: H x W map to filter (e.g. probabilities).
        radius: window radius in pixels.
        eps: regularisation: edges with a grey-level variance well below it are smoothed over.
        step: > 1 fits the local linear models on a grid ``step`` times coarser and
            interpolates them (He and Sun's fast guided filter, 2015): the cost falls by about
            ``step**2`` while the output still follows the full-resolution guide; 1 is exact.

    Returns:
        H x W filtered map (not clipped).
    """
    g, p = guide.float()[None, None], src.float()[None, None]
    gs, ps, r = g, p, radius
    if step > 1:
        gs = F.avg_pool2d(g, step, ceil_mode=True)
        ps = F.avg_pool2d(p, step, ceil_mode=True)
        r = max(1, int(round(radius / step)))
    mean_g, mean_p = _box(gs, r), _box(ps, r)
    var_g = _box(gs * gs, r) - mean_g * mean_g
    a = (_box(gs * ps, r) - mean_g * mean_p) / (var_g + eps)
    b = mean_p - a * mean_g
    a, b = _box(a, r), _box(b, r)
    if step > 1:
        size = tuple(g.shape[-2:])
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    return (a * g + b)[0, 0]


def fast_step(radius: int) -> int:
    """The coarse grid's step for :func:`guided_filter`: 1 (exact) up to a 3 px radius, so
    that the linear models are still fitted over windows of about 5 coarse pixels."""
    return max(1, radius // 2)


FLOOR = 0.01  # maps are refined around their pixels above this (nothing to align elsewhere)


def refine_probabilities(
    probs: torch.Tensor,
    guides: torch.Tensor,
    decoder_size: tuple[int, int],
    spec: dict[str, Any] | None,
) -> torch.Tensor:
    """Refine B x H x W probabilities, each with its guide (B x H x W, or H x W for all: float
    in [0, 1], e.g. :func:`guide_of` of the model input at its own size).

    Only the box around each map's pixels above 1%, widened by twice the radius, is filtered
    (a refined pixel depends on the guide and map within two radii), so the rest of a map
    stays as it is and a small finding costs little. ``spec`` None returns ``probs``. The
    result stays in [0, 1].
    """
    if spec is None or probs.numel() == 0:
        return probs
    h, w = probs.shape[-2:]
    if tuple(guides.shape[-2:]) != (h, w):
        raise ValueError(f"guides of shape {tuple(guides.shape)} for maps of {tuple(probs.shape)}")
    r = radius_px((h, w), decoder_size, spec["radius"])
    out = probs.clone()
    for i in range(probs.shape[0]):
        rows, cols = torch.nonzero(probs[i] > FLOOR, as_tuple=True)
        if rows.numel() == 0:
            continue
        m = 2 * r
        y0, y1 = max(int(rows.min()) - m, 0), min(int(rows.max()) + m + 1, h)
        x0, x1 = max(int(cols.min()) - m, 0), min(int(cols.max()) + m + 1, w)
        g = guides if guides.ndim == 2 else guides[i]
        q = guided_filter(
            g[y0:y1, x0:x1], probs[i, y0:y1, x0:x1], r, spec["eps"], step=fast_step(r)
        )
        out[i, y0:y1, x0:x1] = q.clamp_(0.0, 1.0)
    return out
