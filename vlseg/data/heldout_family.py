"""A held-out phantom *family*: a second renderer, used only for evaluation.

The training phantoms (:mod:`vlseg.data.phantoms`) come from one generator. Scores measured on
more draws of that generator say little about how the model copes with "another scanner" or
"another dermatoscope". This module is a separately written generator for the same two
modalities with the same annotation protocol and language, so that the gap between the two
families measures generalisation to a new image source:

* **anatomy / lesion geometry** is drawn with its own primitives (closed cubic splines through
  jittered anatomical templates, superellipses, polar random-walk outlines), at other positions
  and proportions than the training generator, with extra structures it never draws (stomach with
  an air-fluid level, gallbladder, paraspinal muscles, patient table; skin furrows, air bubbles,
  rulers);
* **appearance** uses its own physics-flavoured models: for CT a per-phase attenuation table,
  beam-hardening cupping, a Butterworth reconstruction kernel, ramp-shaped (CT-like) noise power
  spectrum, bone streaks and a display window; for dermoscopy a chromophore (melanin, haemoglobin,
  dermal melanin) absorption model, directional lighting, specular glare, signal-dependent sensor
  noise and camera sharpening.

Only the *language* is shared: targets and captions come from
:func:`vlseg.data.phantoms.ct.ct_targets` / ``ct_caption`` and
:func:`vlseg.data.phantoms.dermoscopy.derm_targets` / ``derm_caption`` (training phrasings, so
the family tests the image shift and not unseen wording). Attribute combinations that the
training generator reserves for ``test_heldout`` are never drawn here either.

Splits: a sample's split is ``"val"`` where :func:`vlseg.data.phantoms.split_of` says ``"val"``
(about 10%, for calibration checks) and ``"test"`` otherwise; the family has no training split.

Example:
    >>> s = generate_family_sample(seed=0, index=3, modality="ct", size=128)
    >>> s.image.shape, s.split in ("val", "test")
    ((128, 128), True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import interpolate, ndimage
from tqdm import tqdm

from ..atomic import atomic_directory
from .phantoms import split_of, write_samples
from .phantoms.ct import HELDOUT_COMBOS as CT_HELDOUT_COMBOS
from .phantoms.ct import ct_caption, ct_targets
from .phantoms.dermoscopy import CLASSES as DERM_CLASSES
from .phantoms.dermoscopy import HELDOUT_COMBOS as DERM_HELDOUT_COMBOS
from .phantoms.dermoscopy import derm_caption, derm_targets
from .phantoms.sample import PhantomObject, PhantomSample

__all__ = [
    "FAMILY",
    "LARGE_LESION_MIN_R",
    "SMALL_LESION_MAX_R",
    "family_split",
    "generate_family_sample",
    "iter_family_samples",
    "write_family_dataset",
]

FAMILY = "heldout_family_v1"
MODALITIES = ("ct", "dermoscopy")
# Hepatic lesion size classes by equivalent radius (normalised units, image half-width = 1):
# "small" lesions are drawn with r <= SMALL_LESION_MAX_R, "large" ones with r >= LARGE_LESION_MIN_R,
# the same bands as the training generator (small 0.035-0.055, large 0.07-0.1).
SMALL_LESION_MAX_R = 0.05
LARGE_LESION_MIN_R = 0.068
_STREAM = 31  # random stream id, distinct from the training generator's


# --------------------------------------------------------------------------------------------
# Geometry primitives (normalised coordinates: x left->right, y top->bottom, both in [-1, 1]).


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def _fill_polygon(size: int, pts: np.ndarray) -> np.ndarray:
    """Rasterise a closed polygon given in normalised coordinates to an HxW bool mask."""
    px = (pts + 1.0) / 2.0 * size - 0.5
    layer = Image.new("L", (size, size), 0)
    ImageDraw.Draw(layer).polygon([tuple(p) for p in px.tolist()], fill=255, outline=255)
    return np.asarray(layer) > 0


def _spline_outline(ctrl: np.ndarray, n: int = 360) -> np.ndarray:
    """A smooth closed curve (periodic cubic spline) through control points (Nx2)."""
    pts = np.vstack([ctrl, ctrl[:1]])
    tck, _ = interpolate.splprep([pts[:, 0], pts[:, 1]], s=0, per=True, k=3)
    u = np.linspace(0.0, 1.0, n, endpoint=False)
    x, y = interpolate.splev(u, tck)
    return np.stack([x, y], -1)


def _template(
    rng: np.random.Generator,
    size: int,
    ctrl: list[tuple[float, float]],
    *,
    jitter: float,
    scale: tuple[float, float] = (1.0, 1.0),
    shift: tuple[float, float] = (0.0, 0.0),
    angle: float = 0.0,
    pivot: tuple[float, float] | None = None,
) -> np.ndarray:
    """Fill a spline through a jittered, scaled, rotated copy of an anatomical template."""
    p = np.asarray(ctrl, np.float64)
    p = p + rng.normal(0.0, jitter, p.shape)
    c = p.mean(0) if pivot is None else np.asarray(pivot)
    q = (p - c) * np.asarray(scale)
    ca, sa = np.cos(angle), np.sin(angle)
    q = q @ np.array([[ca, sa], [-sa, ca]])
    return _fill_polygon(size, _spline_outline(q + c + np.asarray(shift)))


def _superellipse(x, y, cx, cy, rx, ry, p=2.0, angle=0.0) -> np.ndarray:
    dx, dy = x - cx, y - cy
    ca, sa = np.cos(angle), np.sin(angle)
    u = np.abs((ca * dx + sa * dy) / rx)
    v = np.abs((-sa * dx + ca * dy) / ry)
    return u**p + v**p < 1.0


def _polar_outline(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    r: float,
    *,
    roughness: float,
    n_ctrl: int = 14,
    aspect: float = 1.0,
    angle: float | None = None,
) -> np.ndarray:
    """Control points around a centre whose radii follow a smoothed circular random walk."""
    steps = rng.normal(0.0, 1.0, n_ctrl)
    walk = np.cumsum(steps)
    walk -= np.linspace(0, walk[-1], n_ctrl)  # close the walk
    walk = (walk - walk.mean()) / (walk.std() + 1e-6)
    radii = r * np.clip(1.0 + roughness * walk, 0.35, 2.0)
    th = np.linspace(0, 2 * np.pi, n_ctrl, endpoint=False) + rng.uniform(0, 2 * np.pi)
    a = rng.uniform(0, np.pi) if angle is None else angle
    u, v = radii * np.cos(th) * aspect, radii * np.sin(th) / aspect
    ca, sa = np.cos(a), np.sin(a)
    return np.stack([cx + ca * u - sa * v, cy + sa * u + ca * v], -1)


def _polar_shape(rng, size, cx, cy, r, **kw) -> np.ndarray:
    return _fill_polygon(size, _spline_outline(_polar_outline(rng, cx, cy, r, **kw)))


def _fft_filter(rng: np.random.Generator, size: int, spectrum) -> np.ndarray:
    """White noise shaped by a radial power spectrum ``spectrum(f)`` (f in cycles/pixel)."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij"))
    noise = np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * np.sqrt(spectrum(f)))
    out = noise.real
    return ((out - out.mean()) / (out.std() + 1e-9)).astype(np.float32)


def _lowpass(image: np.ndarray, cutoff: float, order: int) -> np.ndarray:
    """Butterworth low-pass of an HxW image (cutoff in cycles/pixel)."""
    n0, n1 = image.shape
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n0), np.fft.fftfreq(n1), indexing="ij"))
    h = 1.0 / np.sqrt(1.0 + (f / cutoff) ** (2 * order))
    return np.fft.ifft2(np.fft.fft2(image) * h).real.astype(np.float32)


def _edt(mask: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(mask).astype(np.float32)


# --------------------------------------------------------------------------------------------
# CT

# Tissue values (HU) per contrast phase. Different numbers, and one more phase, than the
# training generator's single portal-venous table.
_PHASES: dict[str, dict[str, float]] = {
    "arterial": {
        "liver": 75.0,
        "spleen": 125.0,
        "cortex": 210.0,
        "medulla": 95.0,
        "aorta": 320.0,
        "ivc": 80.0,
    },
    "portal": {
        "liver": 115.0,
        "spleen": 120.0,
        "cortex": 165.0,
        "medulla": 150.0,
        "aorta": 165.0,
        "ivc": 150.0,
    },
}
_CT_FIXED = {
    "air": -1000.0,
    "fat": -105.0,
    "visceral_fat": -85.0,
    "muscle": 48.0,
    "bone": 320.0,
    "cortical": 900.0,
    "csf": 8.0,
    "bile": 12.0,
    "gastric": 20.0,
    "bowel": 35.0,
    "cyst": 2.0,
    "table": 150.0,
}

# Axial templates (image coordinates; the patient's right is on the image left).
_LIVER = [
    (-0.78, -0.02), (-0.74, -0.26), (-0.60, -0.43), (-0.36, -0.52), (-0.10, -0.50),
    (0.14, -0.44), (0.34, -0.34), (0.42, -0.22), (0.30, -0.12), (0.08, -0.09),
    (-0.10, -0.04), (-0.20, 0.08), (-0.30, 0.17), (-0.48, 0.20), (-0.64, 0.15),
]  # fmt: skip
_SPLEEN = [
    (0.50, -0.20), (0.64, -0.14), (0.74, 0.00), (0.74, 0.16), (0.64, 0.26),
    (0.56, 0.20), (0.60, 0.06), (0.54, -0.08),
]  # fmt: skip
_STOMACH = [
    (0.16, -0.14), (0.36, -0.20), (0.52, -0.12), (0.52, 0.02), (0.40, 0.08),
    (0.22, 0.06), (0.14, -0.04),
]  # fmt: skip
_KIDNEY = [  # the right kidney (image left); the hilum notch faces the spine (+x)
    (-0.30, 0.14), (-0.40, 0.17), (-0.45, 0.26), (-0.43, 0.37), (-0.35, 0.43),
    (-0.27, 0.39), (-0.26, 0.32), (-0.29, 0.28), (-0.26, 0.22),
]  # fmt: skip
_POSTERIOR_ARCH = [
    (-0.09, 0.46), (0.09, 0.46), (0.13, 0.53), (0.05, 0.58), (0.02, 0.66),
    (-0.02, 0.66), (-0.05, 0.58), (-0.13, 0.53),
]  # fmt: skip


def _ct_scanner(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "phase": str(rng.choice(list(_PHASES), p=[0.4, 0.6])),
        "noise_hu": float(rng.uniform(8, 24)),
        "noise_peak": float(rng.uniform(0.08, 0.2)),  # NPS peak, cycles/pixel
        "kernel_cutoff": float(rng.uniform(0.22, 0.4)),
        "kernel_order": int(rng.integers(2, 5)),
        "cupping_hu": float(rng.uniform(10, 35)),
        "streak_hu": float(rng.uniform(0, 25)),
        "level": float(rng.uniform(45, 70)),
        "width": float(rng.uniform(300, 400)),
    }


def _lesion_plan(rng: np.random.Generator) -> tuple[str, str, str]:
    while True:
        density = "hyper" if rng.random() < 0.4 else "hypo"
        lobe = "left" if rng.random() < 0.4 else "right"
        if (density, lobe) not in CT_HELDOUT_COMBOS:
            break
    return density, lobe, ("large" if rng.random() < 0.45 else "small")


def _place_in(
    rng: np.random.Generator, size: int, region: np.ndarray, taken: np.ndarray, r: float
) -> np.ndarray | None:
    """A near-round polar shape of equivalent radius ``r`` lying strictly inside ``region``."""
    r_px = r * size / 2
    room = _edt(region & ~ndimage.binary_dilation(taken, iterations=3))
    cand = np.argwhere(room > 1.3 * r_px + 2)
    if len(cand) == 0:
        return None
    x, y = _coords(size)
    for _ in range(15):
        row, col = cand[rng.integers(len(cand))]
        shape = _polar_shape(
            rng,
            size,
            float(x[row, col]),
            float(y[row, col]),
            r,
            roughness=0.07,
            n_ctrl=10,
            aspect=float(rng.uniform(0.9, 1.1)),
        )
        if shape.any() and not (shape & ~region).any():
            return shape
    return None


def render_family_ct(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, list[PhantomObject], dict[str, Any]]:
    """Render one abdominal CT slice of the held-out family.

    Returns ``(image, objects, attrs)`` with the object names, categories and attribute keys of
    the training generator (``liver``, ``spleen``, ``kidney_right``/``kidney_left`` with
    ``side``, ``spine``, ``aorta``, ``hepatic_lesion_<i>`` with ``density``/``lobe``/``size``/
    ``area``, optional ``renal_cyst`` with ``side``).
    """
    x, y = _coords(size)
    sc = _ct_scanner(rng)
    tab = {**_CT_FIXED, **_PHASES[sc["phase"]]}
    n = lambda s: float(rng.normal(0.0, s))  # noqa: E731

    # Patient size and position: organs follow the body via one affine (scale + offset).
    bx, by = n(0.02), 0.04 + n(0.015)
    brx, bry = rng.uniform(0.82, 0.92), rng.uniform(0.56, 0.64)
    body = _superellipse(x, y, bx, by, brx, bry, p=rng.uniform(2.2, 2.8))
    flat_back = y < by + bry * rng.uniform(0.9, 0.97)
    body &= flat_back
    s_x, s_y = brx / 0.87, bry / 0.6
    S = dict(scale=(s_x, s_y), shift=(bx, by - 0.04), pivot=(0.0, 0.04))  # noqa: N806

    def at(px: float, py: float) -> tuple[float, float]:
        """A template point (body centred at (0, 0.04)) mapped into this patient."""
        return px * s_x + bx, (py - 0.04) * s_y + by

    fat_px = rng.uniform(0.03, 0.09) * size / 2
    depth = _edt(body)
    inner = depth > fat_px
    wall = inner & (depth < fat_px + rng.uniform(0.025, 0.045) * size / 2)
    cavity = inner & ~wall

    hu = np.full((size, size), tab["air"], np.float32)
    hu[body] = tab["fat"]
    hu[cavity] = tab["visceral_fat"]
    hu[wall] = tab["muscle"]

    # Patient table below the body (not annotated).
    table_y = by + bry + rng.uniform(0.03, 0.07)
    table = (y > table_y) & (y < table_y + 0.035) & (np.abs(x) < 0.95)
    hu[table] = tab["table"]

    # Solid organs and vessels.
    j = dict(jitter=0.012, **S)
    vx, vy = at(n(0.01), 0.39)
    spine_body = _superellipse(x, y, vx, vy, 0.115 * s_x, 0.085 * s_y, p=2.6)
    arch = _template(rng, size, _POSTERIOR_ARCH, **j)
    canal = _superellipse(x, y, *at(0.0, 0.505), 0.05 * s_x, 0.04 * s_y, p=2.0)
    spine = (spine_body | arch | canal) & body
    ax, ay = at(0.06 + n(0.01), 0.25 + n(0.01))
    aorta = _superellipse(x, y, ax, ay, 0.048, 0.048) & cavity & ~spine
    ivc = _superellipse(x, y, *at(-0.13, 0.21), 0.05, 0.035) & cavity
    kidneys = {}
    for side, mirror in (("right", 1.0), ("left", -1.0)):
        ctrl = [(mirror * px, py) for px, py in _KIDNEY]
        k = _template(rng, size, ctrl, angle=mirror * n(0.12), **j)
        kidneys[side] = k & cavity & ~spine
    liver = _template(rng, size, _LIVER, angle=n(0.05), **j)
    liver &= cavity & ~ivc & ~kidneys["right"] & ~aorta & ~spine
    spleen = _template(rng, size, _SPLEEN, angle=n(0.1), **j) & cavity & ~liver & ~kidneys["left"]
    stomach = _template(rng, size, _STOMACH, **j) & cavity & ~liver & ~spleen & ~kidneys["left"]

    # Bowel loops in the free anterior and central abdomen.
    free = cavity & ~(liver | spleen | stomach | kidneys["left"] | kidneys["right"])
    free &= ~(spine | aorta | ivc)
    for _ in range(int(rng.integers(6, 12))):
        cx, cy = at(rng.uniform(-0.45, 0.45), rng.uniform(-0.3, 0.25))
        loop = _superellipse(x, y, cx, cy, rng.uniform(0.04, 0.08), rng.uniform(0.03, 0.06),
                             p=2.0, angle=rng.uniform(0, np.pi)) & free  # fmt: skip
        if not loop.any():
            continue
        hu[loop] = tab["bowel"] + n(8)
        lumen = _edt(loop) > 1.5
        hu[lumen] = tab["bowel"] - 20 + n(6) if rng.random() < 0.6 else tab["air"] + 150
        free &= ~ndimage.binary_dilation(loop, iterations=1)

    # Paraspinal and psoas muscles.
    for sx in (-1.0, 1.0):
        for cx, cy, rx, ry in ((0.17, 0.40, 0.065, 0.08), (0.16, 0.56, 0.11, 0.065)):
            m = _superellipse(x, y, *at(sx * cx, cy), rx * s_x, ry * s_y, p=2.2)
            hu[m & inner & ~spine & ~kidneys["left"] & ~kidneys["right"]] = tab["muscle"] + 6

    hu[stomach] = tab["gastric"]
    gastric_air = stomach & (y < np.percentile(y[stomach], rng.uniform(8, 25)))
    hu[gastric_air] = tab["air"] + 50
    hu[stomach & ~(_edt(stomach) > 2)] = tab["muscle"]  # the gastric wall

    # Optional gallbladder under the right lobe (not annotated, outside the liver mask).
    if rng.random() < 0.35:
        gb = _superellipse(x, y, *at(-0.2, 0.0), 0.06, 0.04, p=2.0,
                           angle=rng.uniform(-0.6, 0.6)) & free  # fmt: skip
        hu[gb] = tab["bile"]

    hu[liver] = tab["liver"] + n(6)
    hu[spleen] = tab["spleen"] + n(6)
    if sc["phase"] == "arterial":  # arciform splenic enhancement
        hu[spleen] += 18.0 * _fft_filter(rng, size, lambda f: np.exp(-((f / 0.03) ** 2)))[spleen]
    for side, k in kidneys.items():
        d = _edt(k)
        cortex_px = rng.uniform(0.012, 0.02) * size / 2
        hu[k] = np.where(d < cortex_px, tab["cortex"], tab["medulla"])[k] + n(8)
        hilum = _superellipse(x, y, *at(-0.29 if side == "right" else 0.29, 0.3), 0.035, 0.06)
        hu[hilum & k & (d > 1)] = tab["visceral_fat"] + 40
    hu[ivc] = tab["ivc"] + n(8)
    hu[aorta] = tab["aorta"] + n(15)
    hu[aorta & ~(_edt(aorta) > 1.2)] = tab["muscle"]  # the vessel wall
    hu[spine] = tab["bone"] + n(25)
    hu[spine & (_edt(spine) < 2.2)] = tab["cortical"]
    hu[canal & spine] = tab["csf"]
    # Ribs: oval cross-sections around the body wall, lateral and posterior.
    for ang in rng.uniform(-0.25 * np.pi, 1.25 * np.pi, int(rng.integers(5, 10))):
        if abs(np.sin(ang)) < 0.2 and np.cos(ang) < 0:  # keep the anterior wall free
            continue
        r = 0.92
        cx, cy = bx + r * brx * np.cos(ang), by + r * bry * np.sin(ang)
        rib = _superellipse(x, y, cx, cy, 0.03, 0.018, angle=ang + np.pi / 2) & body & ~cavity
        hu[rib] = tab["cortical"] * 0.6
        hu[rib & (_edt(rib) > 1.5)] = tab["bone"]

    objects = [
        PhantomObject("liver", "liver", liver),
        PhantomObject("spleen", "spleen", spleen),
        PhantomObject("kidney_right", "kidney", kidneys["right"], {"side": "right"}),
        PhantomObject("kidney_left", "kidney", kidneys["left"], {"side": "left"}),
        PhantomObject("spine", "spine", spine),
        PhantomObject("aorta", "aorta", aorta),
    ]

    # Lobes: a slanted (Cantlie-like) line; the patient's left lobe lies on the image right.
    lx, ly = at(0.02 + n(0.03), -0.3)
    slant = rng.uniform(0.15, 0.4)
    side_of_line = (x - lx) - slant * (y - ly)
    lobe_regions = {"left": liver & (side_of_line > 0.02), "right": liver & (side_of_line < -0.02)}
    taken = np.zeros_like(liver)
    n_lesions = int(rng.choice([0, 0, 1, 1, 2, 3]))
    for _ in range(n_lesions):
        density, lobe, size_cls = _lesion_plan(rng)
        r = (
            rng.uniform(LARGE_LESION_MIN_R, 0.095)
            if size_cls == "large"
            else rng.uniform(0.032, SMALL_LESION_MAX_R)
        )
        shape = _place_in(rng, size, lobe_regions[lobe], taken, r)
        if shape is None:
            continue
        taken |= shape
        delta = rng.uniform(30, 55) if density == "hypo" else rng.uniform(35, 60)
        core = tab["liver"] + (-delta if density == "hypo" else delta)
        rim = _edt(shape)
        if density == "hyper" and rng.random() < 0.5:  # peripheral (rim) enhancement pattern
            hu[shape] = np.where(rim < 2.5, core + 20, core - 10)[shape]
        else:
            hu[shape] = core
        k = sum(o.category == "hepatic_lesion" for o in objects) + 1
        attrs = {"density": density, "lobe": lobe, "size": size_cls, "area": int(shape.sum())}
        objects.append(PhantomObject(f"hepatic_lesion_{k}", "hepatic_lesion", shape, attrs))

    if rng.random() < 0.3:
        side = "right" if rng.random() < 0.5 else "left"
        region = kidneys[side] & (_edt(kidneys[side]) > 2)
        cyst = _place_in(rng, size, region, np.zeros_like(region), rng.uniform(0.028, 0.04))
        if cyst is not None:
            hu[cyst] = tab["cyst"]
            objects.append(PhantomObject("renal_cyst", "renal_cyst", cyst, {"side": side}))

    # Acquisition and reconstruction: cupping, streaks, kernel blur, CT-like noise, window.
    rho2 = ((x - bx) / brx) ** 2 + ((y - by) / bry) ** 2
    hu -= sc["cupping_hu"] * np.clip(1.0 - rho2, 0, 1) * body
    if sc["streak_hu"] > 0:
        sy = vy
        for _ in range(int(rng.integers(1, 4))):
            t = rng.uniform(0, np.pi)
            dist = np.abs((x - bx) * np.sin(t) - (y - sy) * np.cos(t))
            hu -= (
                sc["streak_hu"]
                * np.exp(-((dist * size / 2) ** 2) / 2.0)
                * body
                * rng.choice([-0.5, 1.0])
            )
    hu = _lowpass(hu, sc["kernel_cutoff"], sc["kernel_order"])
    peak = sc["noise_peak"]
    noise = _fft_filter(rng, size, lambda f: f * np.exp(-((f / peak) ** 2)))
    hu += sc["noise_hu"] * noise * (0.4 + 0.6 * body + 0.4 * np.clip(1.0 - rho2, 0, 1))
    lo = sc["level"] - sc["width"] / 2
    image = np.clip((hu - lo) / sc["width"] * 255.0, 0, 255).round().astype(np.uint8)
    n_found = sum(o.category == "hepatic_lesion" for o in objects)
    attrs = {"family": FAMILY, "scanner": sc, "n_lesions": n_found, "lobe_line": [lx, ly, slant]}
    return image, objects, attrs


# --------------------------------------------------------------------------------------------
# Dermoscopy

# Absorbance per unit chromophore for (R, G, B): epidermal melanin, haemoglobin, and a small
# baseline (carotene, scattering). Dermal melanin is rendered as a blue-grey Tyndall tint.
_EPS_MEL = np.array([0.30, 0.52, 0.78], np.float32)
_EPS_HB = np.array([0.06, 0.50, 0.30], np.float32)
_BASE_ABS = np.array([0.02, 0.06, 0.14], np.float32)
_MELANIN = {"light": (0.05, 0.25), "medium": (0.55, 0.9), "dark": (1.5, 2.1)}
_TYNDALL = np.array([0.42, 0.47, 0.6], np.float32)

# Per class: equivalent radius range, outline roughness, number of lobes, adjectives (the same
# adjective keys the training generator uses, so skin_phrases stays true).
_DERM_SHAPE = {
    "melanoma": ((0.3, 0.44), 0.28, 3, ["dark", "irregular"]),
    "nevus": ((0.16, 0.28), 0.05, 1, ["regular"]),
    "seborrheic keratosis": ((0.2, 0.34), 0.12, 1, []),
    "basal cell carcinoma": ((0.18, 0.3), 0.16, 2, ["pink"]),
    "dermatofibroma": ((0.12, 0.19), 0.04, 1, ["light", "regular"]),
}


def _lines(rng, size: int, n: int, width: tuple[int, int], wander: float, length: float):
    """A layer (HxW float) of random-walk polylines (hairs, vessels)."""
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(n):
        p = rng.uniform(0, size, 2)
        heading = rng.uniform(0, 2 * np.pi)
        pts = [tuple(p)]
        steps = max(4, int(length * size / 8))
        for _ in range(steps):
            heading += rng.normal(0, wander)
            p = p + 8 * np.array([np.cos(heading), np.sin(heading)])
            pts.append(tuple(p))
        draw.line(pts, fill=255, width=int(rng.integers(width[0], width[1] + 1)), joint="curve")
    return np.asarray(layer, np.float32) / 255.0


def _vessel_tree(rng, size: int, mask: np.ndarray) -> np.ndarray:
    """Branching (arborising) vessels: recursive forks that thin out, clipped to the mask."""
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    pts = np.argwhere(mask)

    def grow(p, heading, length, width, depth):
        q = p + length * np.array([np.cos(heading), np.sin(heading)])
        draw.line([tuple(p), tuple(q)], fill=255, width=max(1, int(width)))
        if depth > 0:
            for turn in (-1, 1):
                grow(
                    q, heading + turn * rng.uniform(0.3, 0.8), length * 0.7, width * 0.7, depth - 1
                )

    for _ in range(int(rng.integers(2, 5))):
        r, c = pts[rng.integers(len(pts))]
        grow(np.array([c, r], float), rng.uniform(0, 2 * np.pi), size * 0.05, 3, 3)
    return (np.asarray(layer) > 0) & mask


def _lesion_mask(rng, size: int, cls: str) -> tuple[np.ndarray, float, float, float]:
    (rmin, rmax), rough, lobes, _ = _DERM_SHAPE[cls]
    x, y = _coords(size)
    r = rng.uniform(rmin, rmax)
    cx, cy = rng.uniform(-0.15, 0.15, 2)
    mask = _polar_shape(rng, size, cx, cy, r, roughness=rough, n_ctrl=18,
                        aspect=rng.uniform(0.85, 1.1))  # fmt: skip
    for _ in range(lobes - 1):  # satellite lobes make the outline multi-component / asymmetric
        a = rng.uniform(0, 2 * np.pi)
        d = r * rng.uniform(0.45, 0.75)
        mask |= _polar_shape(rng, size, cx + d * np.cos(a), cy + d * np.sin(a),
                             r * rng.uniform(0.35, 0.55), roughness=rough, n_ctrl=12)  # fmt: skip
    mask &= np.hypot(x, y) < 0.92
    return mask, r, cx, cy


def render_family_dermoscopy(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, list[PhantomObject], dict[str, Any]]:
    """Render one dermoscopy photo of the held-out family.

    Returns ``(image, objects, attrs)``: HxWx3 uint8, the ``skin_lesion`` object (attrs
    ``class``, ``size``, ``adjectives``) and an optional ``ink`` object, and image attributes
    ``class``, ``skin_tone``, ``hair`` as the training generator's captions expect.
    """
    x, y = _coords(size)
    while True:
        cls = str(rng.choice(DERM_CLASSES))
        tone = str(rng.choice(list(_MELANIN), p=[0.4, 0.35, 0.25]))
        if (cls, tone) not in DERM_HELDOUT_COMBOS:
            break
    m0 = rng.uniform(*_MELANIN[tone])
    # Chromophore maps: epidermal melanin, haemoglobin, dermal melanin, whitening (scar/keratin).
    mel = m0 * (1 + 0.08 * _fft_filter(rng, size, lambda f: np.exp(-((f / 0.015) ** 2))))
    blotch = _fft_filter(rng, size, lambda f: np.exp(-((f / 0.03) ** 2)))
    hb = rng.uniform(0.15, 0.35) + 0.06 * blotch
    dermal = np.zeros((size, size), np.float32)
    white = np.zeros((size, size), np.float32)

    # Skin furrows: two families of wavy lines crossing at an angle (the rhombic skin pattern).
    warp = 3.0 * _fft_filter(rng, size, lambda f: np.exp(-((f / 0.02) ** 2)))
    period = rng.uniform(0.06, 0.1) * size
    furrow = np.zeros((size, size), np.float32)
    base_a = rng.uniform(0, np.pi)
    for a in (base_a, base_a + rng.uniform(0.7, 1.2)):
        phase = ((np.cos(a) * x + np.sin(a) * y) * size / 2 + warp) / period
        furrow += np.exp(-(((phase % 1.0) - 0.5) ** 2) / 0.004)
    pores = _fft_filter(rng, size, lambda f: np.exp(-((f / 0.3) ** 2))) > 2.6
    mel = mel + 0.3 * (m0 + 0.3) * furrow + 0.3 * (m0 + 0.3) * pores

    cls_mask, r, cx, cy = _lesion_mask(rng, size, cls)
    d = _edt(cls_mask)
    depth = np.clip(d / max(d.max(), 1.0), 0, 1)
    amp = 1.0 + 0.45 * m0  # pigment must also show on dark skin
    noise = lambda s: _fft_filter(rng, size, lambda f: np.exp(-((f / s) ** 2)))  # noqa: E731
    L = cls_mask.astype(np.float32)  # noqa: N806
    if cls == "nevus":
        netw = np.abs(noise(0.08)) < 0.3
        mel += L * amp * (1.0 + 0.6 * depth + 0.5 * netw * (depth < 0.6))
        globules = (noise(0.12) > 2.0) & (depth > 0.3)
        mel += amp * 0.9 * ndimage.binary_dilation(globules) * L
    elif cls == "melanoma":
        parts = np.argmax(np.stack([noise(0.025) for _ in range(4)]), 0)
        levels = np.choose(parts, [2.6, 1.6, 0.9, 1.8]).astype(np.float32)
        mel += L * amp * ndimage.gaussian_filter(levels, 1.5)
        veil = (parts == 2) & (depth > 0.25)
        dermal += 0.75 * veil
        white += 0.45 * ((noise(0.03) > 1.2) & (depth > 0.2)) * L  # regression
        dots = (noise(0.2) > 2.3) & (depth < 0.5) & cls_mask
        mel += 3.0 * amp * ndimage.binary_dilation(dots)
        hb += 0.35 * L * (parts == 3)
    elif cls == "seborrheic keratosis":
        mel += L * amp * rng.uniform(0.9, 1.4)
        gyri = np.sin(noise(0.06) * 2.5 + 4 * warp / 3.0)  # cerebriform ridges and fissures
        mel += L * 0.6 * amp * (gyri < -0.6)
        white += 0.7 * L * ndimage.binary_dilation((noise(0.25) > 2.5) & (depth > 0.1))  # milia
        mel += 2.5 * amp * L * ((noise(0.25) < -2.6) & (depth > 0.1))  # comedo-like openings
    elif cls == "basal cell carcinoma":
        hb += L * (0.9 + 0.3 * depth)
        mel -= L * 0.6 * (mel - 0.02)
        white += 0.25 * L * (noise(0.05) > 0.9)  # shiny white structures
        nests = (noise(0.06) > 1.8) & (depth > 0.25)
        dermal += 0.7 * nests
        hb += 2.5 * _vessel_tree(rng, size, cls_mask & (depth > 0.1))
    elif cls == "dermatofibroma":
        ring = (depth < 0.7) * (1 - depth)
        mel += L * amp * (0.35 + 0.35 * ring * (np.abs(noise(0.1)) < 0.4))
        white += np.clip((depth - 0.4) * 1.6, 0, 0.75) * L  # central white patch

    # Soft lesion boundary for the chromophore maps; the mask stays the painted core.
    soft = np.clip(ndimage.gaussian_filter(L, 1.2 if cls != "seborrheic keratosis" else 0.6), 0, 1)
    alpha = np.where(cls_mask, 1.0, soft).astype(np.float32)
    skin_mel = m0 * 1.0
    mel = skin_mel + (mel - skin_mel) * alpha
    absorb = (
        np.maximum(mel, 0)[..., None] * _EPS_MEL
        + np.maximum(hb, 0)[..., None] * _EPS_HB
        + _BASE_ABS
    )
    refl = np.exp(-absorb)
    dermal = np.clip(dermal * alpha, 0, 1)[..., None]
    refl = refl * (1 - dermal) + _TYNDALL * dermal * np.exp(-0.3 * absorb)
    white = np.clip(white * alpha, 0, 1)[..., None]
    refl = refl * (1 - white) + np.array([0.93, 0.9, 0.88], np.float32) * white

    objects = [
        PhantomObject(
            "skin_lesion",
            "skin_lesion",
            cls_mask,
            {
                "class": cls,
                "size": "large" if np.sqrt(cls_mask.sum() / np.pi) / (size / 2) > 0.25 else "small",
                "adjectives": list(_DERM_SHAPE[cls][3]),
            },
        )
    ]

    # Ink: a dashed purple line segment beside the lesion (margin marking).
    if rng.random() < 0.25:
        layer = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(layer)
        a = rng.uniform(0, 2 * np.pi)
        dist = r + rng.uniform(0.1, 0.18)
        c = np.array([cx + dist * np.cos(a), cy + dist * np.sin(a)])
        tangent = np.array([-np.sin(a), np.cos(a)])
        for t in np.linspace(-0.25, 0.25, 6):
            p0, p1 = c + tangent * t, c + tangent * (t + 0.06)
            draw.line([tuple((p0 + 1) / 2 * size), tuple((p1 + 1) / 2 * size)],
                      fill=255, width=max(3, size // 70))  # fmt: skip
        ink = (np.asarray(layer) > 0) & ~ndimage.binary_dilation(cls_mask, iterations=2)
        ink &= np.hypot(x, y) < 0.9
        if ink.sum() > 20:
            colour = np.array([0.42, 0.2, 0.55]) * rng.uniform(0.8, 1.1)
            refl[ink] = refl[ink] * 0.15 + colour * 0.85
            objects.append(PhantomObject("ink", "ink", ink))

    # Hair: thin random-walk strands, dark or fair.
    hair = str(rng.choice(["none", "some", "heavy"], p=[0.45, 0.35, 0.2]))
    n_hair = {"none": 0, "some": int(rng.integers(3, 8)), "heavy": int(rng.integers(14, 26))}[hair]
    if n_hair:
        strands = _lines(rng, size, n_hair, (1, 2), 0.12, rng.uniform(0.5, 1.2))
        strands = ndimage.gaussian_filter(strands, 0.4)[..., None]
        tint = np.array([0.12, 0.09, 0.07]) if rng.random() < 0.75 else np.array([0.6, 0.5, 0.35])
        refl = refl * (1 - 0.9 * strands) + tint * 0.9 * strands

    # Optics: directional light, air bubbles with bright rims, a glare spot, field stop / ruler.
    a = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.05, 0.18) * (np.cos(a) * x + np.sin(a) * y)
    refl = refl * light[..., None]
    for _ in range(int(rng.integers(0, 4))):
        bx_, by_, br = rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), rng.uniform(0.03, 0.09)
        rr = np.hypot(x - bx_, y - by_) / br
        refl = refl + (0.35 * np.exp(-((rr - 1) ** 2) / 0.01) + 0.05 * (rr < 1))[..., None]
    gx, gy = rng.uniform(-0.5, 0.5, 2)
    glare = np.exp(-((x - gx) ** 2 + (y - gy) ** 2) / 0.01)
    refl = refl + rng.uniform(0.05, 0.3) * glare[..., None]
    field = str(rng.choice(["none", "rounded_square", "ruler"], p=[0.4, 0.35, 0.25]))
    if field == "rounded_square":
        stop = _superellipse(x, y, 0, 0, rng.uniform(0.9, 1.0), rng.uniform(0.9, 1.0), p=5.0)
        stop = np.clip(ndimage.gaussian_filter(stop.astype(np.float32), 3), 0.03, 1)
        refl = refl * stop[..., None]
    elif field == "ruler":
        band = y > 0.88
        refl[band] = 0.85
        ticks = band & ((((x + 1) * size / 2) % (size / 20)) < 1.2) & (y < 0.95)
        refl[ticks] = 0.1
    # Camera: white balance, gamma, signal-dependent noise and unsharp-mask sharpening.
    refl = np.clip(refl * rng.uniform(0.9, 1.08, 3), 0, 1)
    img = refl ** rng.uniform(0.85, 1.0)
    img = img + rng.normal(0, 1, img.shape) * (0.004 + 0.02 * np.sqrt(img))
    blurred = ndimage.gaussian_filter(img, (1.0, 1.0, 0))
    img = img + rng.uniform(0.2, 0.7) * (img - blurred)
    image = np.clip(img * 255.0, 0, 255).round().astype(np.uint8)
    attrs = {"family": FAMILY, "class": cls, "skin_tone": tone, "hair": hair, "field": field}
    return image, objects, attrs


# --------------------------------------------------------------------------------------------
# Samples and datasets


def family_split(seed: int, index: int) -> str:
    """``"val"`` where :func:`vlseg.data.phantoms.split_of` says so (~10%), else ``"test"``."""
    return "val" if split_of(seed, index) == "val" else "test"


def generate_family_sample(
    *, seed: int, index: int, modality: str, size: int = 256, prompts_per_target: int = 6
) -> PhantomSample:
    """Render one held-out-family phantom with its targets, caption and label.

    Args:
        seed: dataset seed.
        index: sample index.
        modality: ``"ct"`` or ``"dermoscopy"``.
        size: side length in pixels (>= 64).
        prompts_per_target: phrasings drawn for each target (training phrasings).

    Returns:
        A :class:`PhantomSample` with id ``hf_ct_<index>`` / ``hf_derm_<index>``, split
        ``"val"`` or ``"test"`` (see :func:`family_split`) and ``attrs["family"] == FAMILY``.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; available: {', '.join(MODALITIES)}")
    if size < 64:
        raise ValueError(f"size={size} is too small to draw anatomy; use 64 or more")
    rng = np.random.default_rng([seed, index, _STREAM, MODALITIES.index(modality)])
    if modality == "ct":
        image, objects, attrs = render_family_ct(rng, size)
        targets = ct_targets(objects, rng, heldout=False, k=prompts_per_target)
        caption, label = ct_caption(objects)
        mm = round(float(rng.uniform(1.1, 1.9)) * 256 / size, 4)
        prefix = "ct"
    else:
        image, objects, attrs = render_family_dermoscopy(rng, size)
        targets = derm_targets(objects, rng, heldout=False, k=prompts_per_target)
        caption, label = derm_caption(objects, attrs)
        mm = round(float(rng.uniform(0.05, 0.1)) * 256 / size, 4)
        prefix = "derm"
    return PhantomSample(
        id=f"hf_{prefix}_{index:06d}",
        modality=modality,
        image=image,
        objects=objects,
        targets=targets,
        caption=caption,
        label=label,
        spacing=(mm, mm),
        split=family_split(seed, index),
        attrs=attrs,
    )


def iter_family_samples(
    n: int, *, seed: int, modality: str = "all", size: int = 256, prompts_per_target: int = 6
):
    """Yield ``n`` family samples in index order; ``modality="all"`` alternates CT/dermoscopy."""
    if modality not in (*MODALITIES, "all"):
        raise ValueError(f"unknown modality {modality!r}; available: {', '.join(MODALITIES)}, all")
    for i in range(n):
        mod = MODALITIES[i % 2] if modality == "all" else modality
        yield generate_family_sample(
            seed=seed, index=i, modality=mod, size=size, prompts_per_target=prompts_per_target
        )


def write_family_dataset(
    out: str | os.PathLike,
    n: int,
    *,
    seed: int,
    size: int = 256,
    progress: bool = True,
    modality: str = "all",
    prompts_per_target: int = 6,
    overwrite: bool = False,
) -> Path:
    """Write the family as a manifest dataset, in the layout of
    :func:`vlseg.data.phantoms.write_dataset`: ``images/``, ``masks/``, ``manifest.jsonl`` (one
    record per target, see :func:`vlseg.data.phantoms.sample_records`) and ``dataset.json``.

    Args:
        out: target directory (must not exist unless ``overwrite``).
        n: number of samples (~10% ``val``, the rest ``test``).
        seed: dataset seed.
        size: image side in pixels.
        progress: show a progress bar.
        modality: ``"ct"``, ``"dermoscopy"`` or ``"all"`` (alternating).
        prompts_per_target: phrasings per target.
        overwrite: replace an existing directory.

    Returns:
        The dataset directory.
    """
    out = Path(out)
    if n < 1:
        raise ValueError(f"n={n}: ask for at least one sample")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pick another --out or pass --overwrite")
    samples = iter_family_samples(
        n, seed=seed, modality=modality, size=size, prompts_per_target=prompts_per_target
    )
    with atomic_directory(out) as tmp:
        write_samples(tmp, tqdm(samples, total=n, desc="family", unit="img", disable=not progress))
        meta = {
            "generator": "vlseg.data.heldout_family",
            "family": FAMILY,
            "n": n,
            "seed": seed,
            "modality": modality,
            "size": size,
            "prompts_per_target": prompts_per_target,
            "splits": "val where vlseg.data.phantoms.split_of says val, else test",
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out
