"""Domain randomisation of the phantoms' appearance (``appearance="randomized"``).

Following SynthSeg, the anatomy is drawn first as a label map (one tissue label per pixel, see the
``T_*`` constants) and its appearance is then drawn at random per image: tissue intensities with
a contrast phase (on a share of the images arbitrary grey levels for every tissue but the liver
and its lesions), noise model and level, blur and resolution, bias field, streaks, display window
and display curve (gamma, sometimes an inverted grey scale), plus a geometric transform (zoom /
field of view, translation, small rotation) applied to the label map and to every object mask
with the same nearest-neighbour sampling, so masks stay exact.

Nothing here ever flips an image: the CT phantoms follow the radiological convention (patient's
left on the image right) and the side words of the expressions must stay true.

Every function takes its own generator (``arng``): ``generate_sample`` derives it from
``(seed, index, 3, ...)``, so the classic renderer's draws are untouched and a randomized sample is
still a pure function of its seed and index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .sample import PhantomObject
from .shapes import Grid, quad_bezier, smooth_noise, soft_edge

# "randomized-contrast" adds, on top of "randomized": arbitrary tissue grey levels on a share of
# the CT images, other display curves (gamma, inverted grey scale) and skin markings in several
# styles and inks. "randomized" is the look the shipped phantom-tiny was fine-tuned on, kept
# byte-identical (its recipe in docs/model.md stays reproducible).
APPEARANCES = ("classic", "randomized", "randomized-contrast")

# CT tissue labels painted by ``render_ct`` alongside its Hounsfield map.
T_AIR, T_FAT, T_FAT_INNER, T_MUSCLE, T_BOWEL_WALL, T_GAS = 0, 1, 2, 3, 4, 5
T_BONE, T_CORTEX, T_CSF, T_PSOAS, T_LIVER, T_SPLEEN = 6, 7, 8, 9, 10, 11
T_KIDNEY, T_SINUS, T_AORTA, T_IVC, T_RIB, T_CYST = 12, 13, 14, 15, 16, 17
T_FLUID0 = 32  # bowel lumen of loop i: T_FLUID0 + i (each loop has its own content)
T_LESION0 = 64  # hepatic lesion k (0-based, in object order): T_LESION0 + k
T_CORE0 = 96  # necrotic core of lesion k
MAX_LOOPS, MAX_LESIONS = 32, 32

PHASES = ("non-contrast", "arterial", "portal venous")
# Per phase: HU ranges (uniform) of the enhancing tissues.
_PHASE_HU = {
    "non-contrast": {
        "liver": (45, 70),
        "spleen": (38, 55),
        "kidney": (25, 45),
        "aorta": (35, 55),
        "ivc": (35, 55),
        "muscle": (35, 60),
        "bowel_wall": (30, 50),
    },
    "arterial": {
        "liver": (60, 90),
        "spleen": (90, 150),
        "kidney": (140, 230),
        "aorta": (220, 400),
        "ivc": (45, 110),
        "muscle": (45, 70),
        "bowel_wall": (50, 90),
    },
    "portal venous": {
        "liver": (90, 135),
        "spleen": (95, 140),
        "kidney": (140, 210),
        "aorta": (130, 200),
        "ivc": (110, 170),
        "muscle": (50, 75),
        "bowel_wall": (50, 85),
    },
}

MIN_AREA_256 = 20  # objects smaller than this (pixels at 256 px, scaled with size) are dropped


def min_area(size: int) -> int:
    return max(4, round(MIN_AREA_256 * (size / 256) ** 2))


def _u(arng: np.random.Generator, lo: float, hi: float) -> float:
    return float(arng.uniform(lo, hi))


# ----------------------------------------------------------------------------------------------
# CT: anatomy variation


@dataclass
class CTAnatomy:
    """Multipliers / offsets on the classic anatomy; the defaults are the classic phantom exactly.

    ``level`` names the slice level: ``"upper"`` (liver dome and spleen, kidneys not yet or only
    the higher left one), ``"mid"`` (everything) or ``"lower"`` (below the spleen).
    """

    level: str = "mid"
    body_sx: float = 1.0
    body_sy: float = 1.0
    fat: float | None = None  # subcutaneous fat thickness (normalised), None = classic draw
    liver_s: float = 1.0
    liver_dx: float = 0.0
    liver_dy: float = 0.0
    spleen_s: float = 1.0
    spleen_dx: float = 0.0
    spleen_dy: float = 0.0
    kidney_s: tuple[float, float] = (1.0, 1.0)  # right, left
    kidney_dy: tuple[float, float] = (0.0, 0.0)
    irregularity: float = 1.0
    spleen_present: bool = True
    liver_present: bool = True  # False: a slice level below the liver (3-D phantoms)
    kidneys_present: tuple[bool, bool] = (True, True)  # right, left

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in self.__dict__.items()
            if not k.startswith("_")
        }


def ct_anatomy(arng: np.random.Generator) -> CTAnatomy:
    """Draw an anatomy variation: slice level, habitus (body size, fat), organ size and position."""
    level = str(arng.choice(["upper", "mid", "lower"], p=[0.2, 0.6, 0.2]))
    fat = _u(arng, 0.02, 0.16)
    grow = max(0.0, fat - 0.08) * 1.6  # obese patients: larger body outline, organs unchanged
    an = CTAnatomy(
        level=level,
        body_sx=_u(arng, 0.92, 1.08) + grow,
        body_sy=_u(arng, 0.9, 1.08) + grow,
        fat=fat,
        liver_s=_u(arng, 0.82, 1.18),
        liver_dx=_u(arng, -0.04, 0.04),
        liver_dy=_u(arng, -0.04, 0.04),
        spleen_s=_u(arng, 0.7, 1.35),
        spleen_dx=_u(arng, -0.04, 0.03),
        spleen_dy=_u(arng, -0.05, 0.05),
        kidney_s=(_u(arng, 0.8, 1.2), _u(arng, 0.8, 1.2)),
        kidney_dy=(_u(arng, -0.04, 0.04), _u(arng, -0.04, 0.04)),
        irregularity=_u(arng, 0.7, 1.7),
    )
    if level == "upper":  # above the kidneys; the left kidney sits higher and may show
        an.liver_s *= _u(arng, 1.05, 1.15)
        an.kidneys_present = (False, bool(arng.random() < 0.35))
        an.kidney_s = (an.kidney_s[0], an.kidney_s[1] * 0.7)
    elif level == "lower":  # below the spleen tip; the liver narrows
        an.spleen_present = bool(arng.random() < 0.25)
        an.spleen_s *= 0.6
        an.liver_s *= _u(arng, 0.75, 0.9)
    return an


# ----------------------------------------------------------------------------------------------
# CT: geometry


def _sample_map(arng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Nearest-neighbour source indices of a random zoom / rotation / translation (no flips)."""
    zoom = _u(arng, 0.82, 1.28)  # > 1 zooms in (smaller field of view)
    aspect = _u(arng, 0.94, 1.06)
    angle = _u(arng, -10.0, 10.0)
    tx, ty = (_u(arng, -0.08, 0.08) for _ in range(2))
    g = Grid.square(size)
    th = np.deg2rad(angle)
    c, s = np.cos(th), np.sin(th)
    px, py = g.x - tx, g.y - ty
    # Inverse of: scale (zoom * aspect on x), then rotate, then translate.
    sx = (c * px + s * py) / (zoom * aspect)
    sy = (-s * px + c * py) / (zoom / aspect)
    cols = np.rint((sx + 1.0) / 2.0 * size - 0.5).astype(np.int64)
    rows = np.rint((sy + 1.0) / 2.0 * size - 0.5).astype(np.int64)
    valid = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    rows = np.clip(rows, 0, size - 1)
    cols = np.clip(cols, 0, size - 1)
    flat = np.where(valid, rows * size + cols, -1)
    info = {"zoom": zoom, "aspect": aspect, "rotation_deg": angle, "shift": [tx, ty]}
    return flat, valid, info


def _warp(a: np.ndarray, flat: np.ndarray, valid: np.ndarray, fill) -> np.ndarray:
    out = a.reshape(-1)[np.maximum(flat, 0)]
    out[~valid] = fill
    return out


def _warp_objects(
    lab: np.ndarray, objects: list[PhantomObject], flat: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, list[PhantomObject], dict[int, str]]:
    """Warp the label map and masks together; drop objects that became empty or tiny.

    Also returns the density of each kept lesion by its label index (``T_LESION0 + k``).
    """
    size = lab.shape[0]
    lab = _warp(lab, flat, valid, T_AIR)
    keep = []
    densities: dict[int, str] = {}
    lesion_k = 0
    for o in objects:
        mask = _warp(o.mask, flat, valid, False)
        small = int(mask.sum()) < min_area(size)
        if o.category == "hepatic_lesion":
            label = T_LESION0 + lesion_k
            lesion_k += 1
            if small:  # a sliver at the image edge: paint it back as liver, it is not a lesion
                lab[(lab == label) | (lab == label - T_LESION0 + T_CORE0)] = T_LIVER
                continue
            densities[label - T_LESION0] = o.attrs["density"]
        if o.category == "renal_cyst" and small:
            lab[lab == T_CYST] = T_KIDNEY
            continue
        if small:
            continue
        attrs = dict(o.attrs)
        if "area" in attrs:
            attrs["area"] = int(mask.sum())
        keep.append(PhantomObject(o.name, o.category, mask, attrs))
    # Lesions renamed 1..n in order so names stay contiguous after drops.
    n = 0
    for o in keep:
        if o.category == "hepatic_lesion":
            n += 1
            o.name = f"hepatic_lesion_{n}"
    return lab, keep, densities


# ----------------------------------------------------------------------------------------------
# CT: appearance


def _ct_lut(arng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-tissue Hounsfield values for this image (a 256-entry lookup table) and the phase."""
    phase = str(arng.choice(PHASES, p=[0.3, 0.3, 0.4]))
    ph = _PHASE_HU[phase]
    v = {k: _u(arng, *r) for k, r in ph.items()}
    fatty = bool(arng.random() < 0.15)
    if fatty:  # steatosis: the liver drops below the spleen
        v["liver"] -= _u(arng, 20, 50)
    lut = np.zeros(256, np.float32)
    fat = _u(arng, -120, -80)
    lut[T_AIR] = _u(arng, -1010, -980)
    lut[T_FAT] = fat
    lut[T_FAT_INNER] = fat + _u(arng, 5, 45)
    lut[T_SINUS] = _u(arng, -80, -20)
    lut[T_MUSCLE] = v["muscle"]
    lut[T_PSOAS] = v["muscle"] + _u(arng, -8, 8)
    lut[T_BOWEL_WALL] = v["bowel_wall"]
    lut[T_GAS] = _u(arng, -1000, -850)
    lut[T_BONE] = _u(arng, 180, 420)
    lut[T_CORTEX] = _u(arng, 450, 1000)
    lut[T_RIB] = lut[T_CORTEX] * _u(arng, 0.5, 0.9)
    lut[T_CSF] = _u(arng, 0, 25)
    lut[T_LIVER] = v["liver"]
    lut[T_SPLEEN] = v["spleen"]
    lut[T_KIDNEY] = v["kidney"]
    lut[T_AORTA] = v["aorta"]
    lut[T_IVC] = v["ivc"]
    lut[T_CYST] = _u(arng, -5, 18)
    oral = bool(arng.random() < 0.3)
    for i in range(MAX_LOOPS):
        if oral and arng.random() < 0.55:
            lut[T_FLUID0 + i] = _u(arng, 150, 400)  # positive oral contrast
        else:
            lut[T_FLUID0 + i] = _u(arng, -5, 30)
    info = {"phase": phase, "fatty_liver": fatty, "oral_contrast": oral}
    info["hu"] = {k: round(float(x), 1) for k, x in v.items()}
    return lut, info


# SynthSeg's lesson taken further than the contrast phases: on a share of the images every
# tissue but the liver and its lesions gets an arbitrary grey level inside the display window, so
# organs must be told apart by shape and position, not by a brightness order learned from one
# protocol. The liver keeps its value because the lesions' density words are relative to it.
SYNTHETIC_CONTRAST_P = 0.15
_SYNTHETIC_TISSUES = (
    T_FAT,
    T_FAT_INNER,
    T_MUSCLE,
    T_PSOAS,
    T_BOWEL_WALL,
    T_SPLEEN,
    T_KIDNEY,
    T_AORTA,
    T_IVC,
    T_CSF,
    T_SINUS,
    T_BONE,
)
# Another display pipeline on a share of the images: a gamma curve, an inverted grey scale (a
# MONOCHROME1 image shown as MONOCHROME2, an export with the wrong look-up table) and extra
# quantum noise on top.
DISPLAY_P = 0.3


def _synthetic_contrast(arng: np.random.Generator, lut: np.ndarray, lo: float, hi: float) -> None:
    """Redraw the non-liver tissues of ``lut`` anywhere in (a little beyond) the window; a renal
    cyst keeps a visible step from the kidney around it. In place."""
    w = hi - lo
    for t in _SYNTHETIC_TISSUES:
        lut[t] = _u(arng, lo - 0.25 * w, hi + 0.25 * w)
    step = _u(arng, 0.15, 0.4) * w * (1 if arng.random() < 0.5 else -1)
    lut[T_CYST] = lut[T_KIDNEY] + step


def _display_curve(arng: np.random.Generator, v: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Map windowed values in [0, 1] through a random display curve (see ``DISPLAY_P``)."""
    if arng.random() >= DISPLAY_P:
        return v, {"gamma": 1.0, "inverted": False, "noise": 0.0}
    gamma = float(np.exp(_u(arng, np.log(0.45), np.log(2.2))))
    v = v**gamma
    inverted = bool(arng.random() < 0.5)
    if inverted:
        v = 1.0 - v
    noise = _u(arng, 0.0, 0.09)
    v = v + noise * arng.standard_normal(v.shape).astype(np.float32)
    return v, {"gamma": gamma, "inverted": inverted, "noise": noise}


def _streaks(arng: np.random.Generator, g: Grid, lab: np.ndarray) -> np.ndarray:
    """Radial bright/dark streaks from a dense point (metal or beam hardening at the spine)."""
    dense = np.argwhere(np.isin(lab, (T_CORTEX, T_BONE)))
    if len(dense) and arng.random() < 0.6:
        r, c = dense[arng.integers(len(dense))]
        cx, cy = float(g.x[r, c]), float(g.y[r, c])
    else:
        cx, cy = _u(arng, -0.4, 0.4), _u(arng, -0.3, 0.4)
    out = np.zeros_like(g.x)
    dx, dy = g.x - cx, g.y - cy
    dist = np.sqrt(dx * dx + dy * dy)
    for k in range(int(arng.integers(3, 10))):
        th = _u(arng, 0, np.pi)
        perp = np.abs(dx * np.sin(th) - dy * np.cos(th)) * g.size / 2
        width = _u(arng, 0.6, 2.0)
        amp = _u(arng, 20, 90) * (1 if k % 2 == 0 else -1)
        out += amp * np.exp(-0.5 * (perp / width) ** 2) * np.exp(-dist / _u(arng, 0.4, 1.2))
    return out


def _resample(a: np.ndarray, factor: float) -> np.ndarray:
    """Lower the resolution by ``factor`` (box down, bilinear up): a thicker, softer scan."""
    size = a.shape[0]
    small = max(8, round(size / factor))
    im = Image.fromarray(a.astype(np.float32), mode="F")
    im = im.resize((small, small), Image.Resampling.BOX)
    return np.array(im.resize((size, size), Image.Resampling.BILINEAR), np.float32)


def ct_appearance(
    arng: np.random.Generator,
    lab: np.ndarray,
    objects: list[PhantomObject],
    anatomy: CTAnatomy,
    *,
    synthetic_contrast: bool = False,
) -> tuple[np.ndarray, list[PhantomObject], dict[str, Any]]:
    """Render a CT image from a tissue label map with a random appearance and geometry.

    Args:
        arng: the randomisation generator.
        lab: HxW uint8 tissue labels (``T_*``) painted by ``render_ct``.
        objects: the annotated objects (masks on the same grid as ``lab``).
        anatomy: the anatomy variation used to draw ``lab`` (recorded in the attributes).
        synthetic_contrast: also draw synthetic tissue contrasts and display curves
            (``appearance="randomized-contrast"``); False draws exactly what it drew before
            they existed.

    Returns:
        ``(image, objects, attrs)`` as ``render_ct``: the windowed uint8 image, the objects after
        the geometric transform (empty or tiny ones dropped) and the image attributes.
    """
    size = lab.shape[0]
    g = Grid.square(size)
    flat, valid, geo = _sample_map(arng, size)
    lab, objects, densities = _warp_objects(lab, objects, flat, valid)

    lut, tissue = _ct_lut(arng)
    noise_kind = str(arng.choice(["white", "correlated", "poisson", "textured"]))
    noise = _u(arng, 3, 28)
    blur = _u(arng, 0.3, 1.5)
    res = _u(arng, 1.3, 2.5) if arng.random() < 0.35 else 1.0
    # Soft-tissue window, sometimes a narrow liver window.
    width = _u(arng, 150, 260) if arng.random() < 0.3 else _u(arng, 300, 520)
    # Display window level drawn independently of the tissues (so the liver's grey level moves
    # with the phase), kept where the liver stays inside the window.
    level0 = _u(arng, 10, 90)
    liver_pos = float(np.clip((lut[T_LIVER] - level0) / width + 0.5, 0.3, 0.85))
    # Lesions: contrast to the liver well above the noise, raised for small lesions that blur
    # and a coarse resolution would wash out, so "hypodense" / "hyperdense" stay visibly true.
    sigma_eff = float(np.hypot(blur, 0.45 * res if res > 1 else 0.0))
    contrasts = {}
    for k in densities:
        r_px = float(np.sqrt((lab == T_LESION0 + k).sum() / np.pi))
        retention = max(0.35, 1.0 - float(np.exp(-(r_px**2) / (2 * sigma_eff**2))))
        contrasts[k] = max(_u(arng, 25, 80), 1.5 * noise + 5) / retention
    margin = 0.06
    hyper = [c for k, c in contrasts.items() if densities[k] == "hyper"]
    hypo = [c for k, c in contrasts.items() if densities[k] == "hypo"]
    if hyper:  # room above the liver in the window
        liver_pos = min(liver_pos, max(0.3, 1 - margin - max(hyper) / width))
    if hypo:  # room below it
        liver_pos = max(liver_pos, min(0.7, margin + max(hypo) / width))
    level = lut[T_LIVER] - (liver_pos - 0.5) * width
    lo, hi = level - width / 2, level + width / 2
    for k, density in densities.items():
        if density == "hypo":
            val = max(lut[T_LIVER] - contrasts[k], lo + margin * width)
            lut[T_CORE0 + k] = max(val - _u(arng, 10, 30), lo)
        else:
            val = min(lut[T_LIVER] + contrasts[k], hi - margin * width)
            lut[T_CORE0 + k] = val
        lut[T_LESION0 + k] = val

    synthetic = synthetic_contrast and bool(arng.random() < SYNTHETIC_CONTRAST_P)
    if synthetic:
        _synthetic_contrast(arng, lut, lo, hi)

    hu = lut[lab]
    body = lab != T_AIR
    tex_amp, tex_sigma = _u(arng, 1, 10), _u(arng, 0.8, 4)
    hu += tex_amp * smooth_noise(arng, size, tex_sigma) * body
    if tissue["phase"] == "arterial" and arng.random() < 0.6:  # heterogeneous arterial spleen
        hu += _u(arng, 15, 40) * smooth_noise(arng, size, _u(arng, 3, 7)) * (lab == T_SPLEEN)
    streak = bool(arng.random() < 0.3)
    if streak:
        hu += _streaks(arng, g, lab) * body
    hu = ndimage.gaussian_filter(hu, blur)
    if res > 1.0:
        hu = _resample(hu, res)
    if noise_kind == "white":
        n = arng.standard_normal((size, size)).astype(np.float32)
    elif noise_kind == "correlated":
        n = smooth_noise(arng, size, _u(arng, 0.6, 1.5))
    elif noise_kind == "poisson":  # photon noise: larger where the beam is attenuated more
        att = np.clip((hu + 1000.0) / 1100.0, 0.1, 2.5)
        n = np.sqrt(att) * arng.standard_normal((size, size)).astype(np.float32)
    else:  # textured: fine grain plus blotchy mid-frequency mottle
        n = 0.8 * smooth_noise(arng, size, 0.7) + 0.5 * smooth_noise(arng, size, _u(arng, 2, 4))
    hu += noise * n
    bias = _u(arng, 0, 30)
    ang = _u(arng, 0, 2 * np.pi)
    ramp = _u(arng, -15, 15) * (np.cos(ang) * g.x + np.sin(ang) * g.y)
    hu += bias * smooth_noise(arng, size, size / _u(arng, 3, 6)) + ramp + _u(arng, -15, 15)
    v = np.clip((hu - lo) / width, 0.0, 1.0)
    if synthetic_contrast:
        v, display = _display_curve(arng, v)
    image = np.clip(v * 255.0, 0, 255).round().astype(np.uint8)

    scanner = {
        "noise": noise_kind,
        "noise_hu": noise,
        "blur_px": blur,
        "resolution_factor": res,
        "bias_hu": bias,
        "streaks": streak,
        "level": float(level),
        "width": width,
        "texture_hu": tex_amp,
    }
    if synthetic_contrast:
        scanner.update(synthetic_contrast=synthetic, display=display)
    attrs = {
        "appearance": "randomized",
        "scanner": scanner,
        "contrast": tissue,
        "geometry": geo,
        "anatomy": anatomy.as_dict(),
        "n_lesions": sum(o.category == "hepatic_lesion" for o in objects),
    }
    return image, objects, attrs


# ----------------------------------------------------------------------------------------------
# Dermoscopy

# Skin colour ladder (very light ... very dark); each named tone covers a band of it.
_SKIN_LADDER = np.array(
    [
        [252, 220, 200],
        [236, 196, 172],
        [222, 172, 140],
        [204, 150, 118],
        [165, 112, 80],
        [132, 90, 64],
        [86, 58, 44],
    ],
    np.float32,
)
_TONE_BAND = {"light": (0.0, 1.6), "medium": (2.2, 3.6), "dark": (4.3, 6.0)}


def derm_skin(arng: np.random.Generator, tone: str) -> np.ndarray:
    """A skin base colour anywhere in the named tone's band, with a random undertone."""
    pos = _u(arng, *_TONE_BAND[tone])
    i = min(int(pos), len(_SKIN_LADDER) - 2)
    t = pos - i
    base = _SKIN_LADDER[i] * (1 - t) + _SKIN_LADDER[i + 1] * t
    return base * arng.uniform(0.94, 1.06, 3).astype(np.float32)


def derm_hair(arng: np.random.Generator, img: np.ndarray, size: int, hair: str) -> np.ndarray:
    """Hairs of random count (within the named density), thickness, curl and colour."""
    n = {"none": 0, "some": int(arng.integers(3, 16)), "heavy": int(arng.integers(16, 46))}[hair]
    if n == 0:
        return img
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    wmax = 1 + int(arng.integers(1, 4))
    for _ in range(n):
        p0 = arng.uniform(-0.1, 1.1, 2) * size
        d = arng.normal(0, 1, 2)
        d /= np.linalg.norm(d) + 1e-6
        p2 = p0 + d * _u(arng, 0.2, 0.9) * size
        p1 = (p0 + p2) / 2 + arng.normal(0, _u(arng, 0.03, 0.2) * size, 2)
        w = int(arng.integers(1, wmax + 1)) * max(1, size // 256)
        draw.line(quad_bezier(p0, p1, p2, 40), fill=255, width=w)
    alpha = ndimage.gaussian_filter(np.asarray(layer, np.float32) / 255.0, _u(arng, 0.3, 0.9))
    if arng.random() < 0.25:  # blond or grey hair
        colour = np.array([170, 140, 100]) if arng.random() < 0.5 else np.array([185, 180, 175])
    else:
        colour = np.array([45, 30, 22]) * _u(arng, 0.3, 1.3)
    return (
        img * (1 - np.clip(alpha * 1.2, 0, 0.95)[..., None])
        + colour * np.clip(alpha * 1.2, 0, 0.95)[..., None]
    )


def _bubbles(arng: np.random.Generator, img: np.ndarray, g: Grid) -> np.ndarray:
    """Air bubbles in the immersion fluid: bright rims, a slight lens brightening, a glint."""
    for _ in range(int(arng.integers(1, 14))):
        cx, cy = arng.uniform(-0.9, 0.9, 2)
        r = _u(arng, 0.015, 0.07)
        d = np.sqrt((g.x - cx) ** 2 + (g.y - cy) ** 2)
        rim = np.exp(-0.5 * ((d - r) / max(r * 0.12, 1.5 / g.size)) ** 2)
        inside = d < r
        img = img * (1 + 0.08 * inside[..., None])
        img = img * (1 - 0.6 * rim[..., None]) + 245 * 0.6 * rim[..., None]
        glint = np.exp(
            -0.5 * (((g.x - cx + r * 0.35) ** 2 + (g.y - cy + r * 0.35) ** 2) / (r * 0.15) ** 2)
        )
        img = img * (1 - 0.8 * glint[..., None]) + 255 * 0.8 * glint[..., None]
    return img


def _ruler(arng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """A millimetre ruler along one image edge."""
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    band = int(size * _u(arng, 0.04, 0.08))
    step = max(3, int(size * _u(arng, 0.02, 0.04)))
    edge = int(arng.integers(4))
    tick_w = max(1, size // 256)
    for i, p in enumerate(range(int(arng.integers(0, step)), size, step)):
        length = band if i % 5 == 0 else band // 2
        draw.line([(p, 0), (p, length)], fill=255, width=tick_w)
    draw.line([(0, 1), (size, 1)], fill=255, width=tick_w)
    ticks = np.asarray(layer, np.float32) / 255.0
    plate = np.zeros((size, size), np.float32)
    plate[: int(band * 1.3)] = 1.0
    ticks, plate = np.rot90(ticks, edge), np.rot90(plate, edge)
    light = arng.random() < 0.5
    plate_col = np.array([235, 235, 225]) if light else np.array([40, 40, 45])
    tick_col = np.array([20, 20, 20]) if light else np.array([230, 230, 230])
    img = img * (1 - 0.85 * plate[..., None]) + plate_col * 0.85 * plate[..., None]
    return img * (1 - ticks[..., None]) + tick_col * ticks[..., None]


# Skin-marker inks: gentian violet, blue, black, green (RGB, before the pen's strength).
_INKS = np.array([[110, 60, 150], [70, 50, 140], [40, 70, 160], [35, 35, 45], [40, 110, 80]])
INK_STYLES = ("arc", "straight", "dashed", "dotted", "ring", "cross")


def derm_ink(
    arng: np.random.Generator,
    layer: Image.Image,
    centre: tuple[float, float],
    radius: float,
    angle: float,
) -> tuple[np.ndarray, float]:
    """Draw a surgical skin marking beside a lesion on ``layer`` (mode "L", in place) in a random
    style (``INK_STYLES``: an arc, a straight margin line, a dashed or dotted line, a ring around
    the lesion, a cross), width and pen; returns the ink's RGB colour and opacity.

    ``centre``/``radius`` (pixels) describe the lesion's circle, ``angle`` where the mark sits."""
    size = layer.size[0]
    draw = ImageDraw.Draw(layer)
    style = str(arng.choice(INK_STYLES, p=[0.25, 0.2, 0.2, 0.15, 0.1, 0.1]))
    width = max(2, round(size * _u(arng, 0.01, 0.03)))
    cx, cy = centre
    span = _u(arng, 0.6, 1.4)
    r = radius * _u(arng, 0.95, 1.25)

    def at(a: float, rr: float = r) -> np.ndarray:
        return np.array([cx + rr * np.cos(a), cy + rr * np.sin(a)])

    if style == "arc":
        pts = [tuple(at(angle + span * t)) for t in np.linspace(0, 1, 40)]
        draw.line(pts, fill=255, width=width)
    elif style in ("straight", "dashed", "dotted"):
        mid, tangent = at(angle + span / 2), angle + span / 2 + np.pi / 2
        half = r * span / 2
        d = np.array([np.cos(tangent), np.sin(tangent)])
        n = {"straight": 1, "dashed": int(arng.integers(4, 9)), "dotted": int(arng.integers(5, 12))}
        for k in range(n[style]):
            t0, t1 = -1 + 2 * k / n[style], -1 + 2 * (k + 0.55) / n[style]
            if style == "straight":
                t0, t1 = -1.0, 1.0
            a, b = mid + d * half * t0, mid + d * half * t1
            if style == "dotted":
                c, rad = (a + b) / 2, width * _u(arng, 0.6, 1.0)
                draw.ellipse([c[0] - rad, c[1] - rad, c[0] + rad, c[1] + rad], fill=255)
            else:
                draw.line([tuple(a), tuple(b)], fill=255, width=width)
    elif style == "ring":
        pts = [tuple(at(a, r * _u(arng, 0.97, 1.03))) for a in np.linspace(0, 2 * np.pi, 60)]
        draw.line(pts + [pts[0]], fill=255, width=width)
    else:  # a small cross beside the lesion
        c, arm = at(angle, r * 1.15), radius * _u(arng, 0.15, 0.35)
        for a in (angle + np.pi / 4, angle - np.pi / 4):
            d = np.array([np.cos(a), np.sin(a)]) * arm
            draw.line([tuple(c - d), tuple(c + d)], fill=255, width=width)
    colour = _INKS[int(arng.integers(len(_INKS)))] * arng.uniform(0.8, 1.2, 3)
    return np.clip(colour, 0, 255).astype(np.float32), _u(arng, 0.55, 0.9)


def derm_finish(
    arng: np.random.Generator, img: np.ndarray, g: Grid
) -> tuple[np.ndarray, dict[str, Any]]:
    """Acquisition randomisation of a dermoscopy photo (float HxWx3 in, uint8 out)."""
    size = g.size
    info: dict[str, Any] = {}
    info["bubbles"] = bool(arng.random() < 0.3)
    if info["bubbles"]:
        img = _bubbles(arng, img, g)
    # Illumination: overall level, a linear gradient, an off-centre radial falloff, glare.
    gain = _u(arng, 0.72, 1.2)
    ang = _u(arng, 0, 2 * np.pi)
    grad = _u(arng, 0, 0.25) * (np.cos(ang) * g.x + np.sin(ang) * g.y)
    ox, oy = arng.uniform(-0.3, 0.3, 2)
    fall = _u(arng, 0, 0.45) * ((g.x - ox) ** 2 + (g.y - oy) ** 2)
    img = img * (gain * (1 + grad - fall))[..., None]
    if arng.random() < 0.25:
        gx, gy = arng.uniform(-0.7, 0.7, 2)
        glare = np.exp(-0.5 * ((g.x - gx) ** 2 + (g.y - gy) ** 2) / _u(arng, 0.05, 0.2) ** 2)
        img = img + _u(arng, 30, 90) * glare[..., None]
    # White balance (colour temperature and tint) and per-channel gains.
    temp, tint = _u(arng, -1, 1), _u(arng, -1, 1)
    wb = np.array([1 + 0.14 * temp, 1 + 0.03 * tint, 1 - 0.14 * temp]) * arng.uniform(0.95, 1.05, 3)
    img = img * wb.astype(np.float32)
    # Saturation, contrast, gamma.
    grey = img.mean(-1, keepdims=True)
    img = grey + (img - grey) * _u(arng, 0.7, 1.25)
    mean = float(img.mean())
    img = mean + (img - mean) * _u(arng, 0.85, 1.2)
    gamma = _u(arng, 0.8, 1.25)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** gamma
    info["ruler"] = bool(arng.random() < 0.15)
    if info["ruler"]:
        img = _ruler(arng, img, size)
    # Dark circular field of a contact dermoscope, or a soft vignette.
    r2 = g.x**2 + g.y**2
    if arng.random() < 0.55:
        cx, cy = arng.uniform(-0.06, 0.06, 2)
        rad = _u(arng, 0.93, 1.2)
        field = soft_edge((g.x - cx) ** 2 + (g.y - cy) ** 2 < rad**2, _u(arng, 1.0, 6.0))
        img = img * field[..., None]
        info["vignette"] = "field"
    else:
        img = img * (1 - _u(arng, 0, 0.5) * np.clip(r2 / 2, 0, 1))[..., None]
        info["vignette"] = "soft"
    blur = _u(arng, 0.4, 1.8) if arng.random() < 0.5 else 0.0
    if blur:
        img = ndimage.gaussian_filter(img, (blur, blur, 0))
    if arng.random() < 0.25:
        f = _u(arng, 1.5, 3.0)
        img = np.stack([_resample(img[..., c], f) for c in range(3)], -1)
        info["resolution_factor"] = f
    sigma = _u(arng, 1, 8)
    img = img + sigma * arng.standard_normal(img.shape).astype(np.float32)
    info.update(blur_px=blur, noise=sigma, gain=gain, gamma=gamma, white_balance=wb.tolist())
    return np.clip(img, 0, 255).round().astype(np.uint8), info


__all__ = [
    "APPEARANCES",
    "CTAnatomy",
    "ct_anatomy",
    "ct_appearance",
    "derm_finish",
    "derm_hair",
    "derm_ink",
    "derm_skin",
    "min_area",
]
