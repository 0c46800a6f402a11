"""Dermoscopy photo phantoms.

Skin of a sampled tone with pores and low-frequency mottling, one lesion whose class sets its size,
border irregularity and colour pattern (pigment network, variegation, milia, arborising vessels,
central scar), hairs drawn over everything, an optional ink marking, uneven illumination and the
dark circular field of a contact dermoscope.

Held-out combinations: (basal cell carcinoma, dark skin) and (dermatofibroma, light skin) appear
only in ``test_heldout``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from . import language as lang
from . import randomize as rnd
from .sample import PhantomObject, Target
from .shapes import Grid, quad_bezier, random_blob, smooth_noise, soft_edge

CLASSES = ["melanoma", "nevus", "seborrheic keratosis", "basal cell carcinoma", "dermatofibroma"]
SKIN_TONES = {"light": (236, 196, 172), "medium": (204, 150, 118), "dark": (132, 90, 64)}
HELDOUT_COMBOS = {("basal cell carcinoma", "dark"), ("dermatofibroma", "light")}

# Per class: radius range (normalised), border irregularity, edge softness (px), visual adjectives.
CLASS_SHAPE = {
    "melanoma": ((0.28, 0.45), 0.22, 1.5, ["dark", "irregular"]),
    "nevus": ((0.16, 0.3), 0.05, 2.0, ["regular"]),
    "seborrheic keratosis": ((0.2, 0.36), 0.1, 0.7, []),
    "basal cell carcinoma": ((0.18, 0.32), 0.13, 1.5, ["pink"]),
    "dermatofibroma": ((0.12, 0.2), 0.04, 3.0, ["light", "regular"]),
}


def _mix(base: np.ndarray, color, alpha: np.ndarray) -> np.ndarray:
    """Blend a colour (RGB triple or HxWx3) into ``base`` with an HxW alpha."""
    return base * (1 - alpha[..., None]) + np.asarray(color, np.float32) * alpha[..., None]


def _lesion_colour(
    rng, g: Grid, cls: str, mask: np.ndarray, img: np.ndarray, r_px: float, skin: np.ndarray
):
    size = g.size
    dist = ndimage.distance_transform_edt(mask)
    depth = np.clip(dist / max(dist.max(), 1.0), 0, 1)  # 0 at border, 1 at the centre
    net = np.abs(smooth_noise(rng, size, max(1.0, r_px / 14))) < 0.35  # pigment network lines
    if cls == "nevus":
        brown = np.minimum(np.array([120, 78, 52]), skin * 0.55) * rng.uniform(0.8, 1.15)
        img = _mix(img, brown, 0.55 + 0.35 * depth)
        img = _mix(img, brown * 0.6, 0.35 * net * mask)
    elif cls == "melanoma":
        palette = np.array(
            [[92, 55, 38], [40, 26, 22], [96, 110, 140], [170, 70, 70], [150, 105, 80]], np.float32
        )
        fields = np.stack([smooth_noise(rng, size, r_px / 4) for _ in palette], -1)
        colour = palette[np.argmax(fields, -1)]
        img = _mix(img, ndimage.gaussian_filter(colour, (2.5, 2.5, 0)), 0.85 * (depth > 0))
        dots = (smooth_noise(rng, size, 1.2) > 2.2) & mask & (depth < 0.4)
        img = _mix(img, (30, 20, 18), 0.9 * dots)
        img = _mix(img, (60, 40, 35), 0.3 * net * mask)
    elif cls == "seborrheic keratosis":
        tan = np.array([150, 112, 74]) * rng.uniform(0.8, 1.15)
        img = _mix(img, tan, np.full(mask.shape, 0.85))
        cerebriform = smooth_noise(rng, size, 2.0)
        img = img * (1 + 0.12 * cerebriform[..., None] * mask[..., None])
        milia = (smooth_noise(rng, size, 1.0) > 2.4) & mask
        img = _mix(img, (235, 230, 210), 0.85 * ndimage.binary_dilation(milia))
        comedo = (smooth_noise(rng, size, 1.0) < -2.5) & mask
        img = _mix(img, (50, 35, 25), 0.8 * comedo)
    elif cls == "basal cell carcinoma":
        img = _mix(img, (222, 150, 150), 0.6 + 0.2 * depth)
        img = _mix(img, (240, 215, 215), 0.3 * (smooth_noise(rng, size, r_px / 5) > 0.8))
        nests = (smooth_noise(rng, size, 2.5) > 2.0) & (depth > 0.2)
        img = _mix(img, (90, 100, 125), 0.7 * nests)
        img = _draw_vessels(rng, img, g, mask)
    elif cls == "dermatofibroma":
        img = _mix(img, skin * np.array([0.72, 0.6, 0.55]), 0.6 * (1 - depth) + 0.3)
        img = _mix(img, (120, 80, 60), 0.3 * net * mask)
        img = _mix(img, (238, 228, 220), np.clip((depth - 0.45) * 2.2, 0, 0.9))
    return img


def _draw_vessels(rng, img: np.ndarray, g: Grid, mask: np.ndarray) -> np.ndarray:
    """Arborising red vessels (branching curves) inside the lesion."""
    layer = Image.new("L", (g.size, g.size), 0)
    draw = ImageDraw.Draw(layer)
    pts = np.argwhere(mask)
    for _ in range(rng.integers(3, 7)):
        r, c = pts[rng.integers(len(pts))]
        p0 = np.array([c, r], np.float32)
        for _ in range(3):
            p2 = p0 + rng.normal(0, g.size * 0.06, 2)
            p1 = (p0 + p2) / 2 + rng.normal(0, g.size * 0.02, 2)
            draw.line(quad_bezier(p0, p1, p2), fill=255, width=1)
            p0 = p2
    vessels = (np.asarray(layer) > 0) & mask
    return _mix(img, (175, 35, 45), 0.85 * vessels)


def _draw_hair(rng, img: np.ndarray, size: int, n: int) -> np.ndarray:
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(n):
        p0 = rng.uniform(-0.1, 1.1, 2) * size
        direction = rng.normal(0, 1, 2)
        direction /= np.linalg.norm(direction) + 1e-6
        length = rng.uniform(0.3, 0.9) * size
        p2 = p0 + direction * length
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.12 * size, 2)
        draw.line(quad_bezier(p0, p1, p2, 40), fill=255, width=int(rng.integers(1, 3)))
    alpha = ndimage.gaussian_filter(np.asarray(layer, np.float32) / 255.0, 0.5)
    colour = np.array([45, 30, 22]) * rng.uniform(0.5, 1.2)
    return _mix(img, colour, np.clip(alpha * 1.2, 0, 0.95))


def render_dermoscopy(
    rng: np.random.Generator,
    size: int,
    *,
    heldout: bool = False,
    randomize: np.random.Generator | None = None,
    ink_styles: bool = False,
) -> tuple[np.ndarray, list[PhantomObject], dict[str, Any]]:
    """Render one dermoscopy photo.

    Args:
        rng: random generator (the only source of randomness of the classic phantom).
        size: output side length in pixels.
        heldout: draw from the held-out (class, skin tone) combinations only.
        randomize: a separate generator for domain randomisation (``appearance="randomized"``):
            skin colour anywhere in the tone's band, hair count / thickness / colour, bubbles,
            rulers, illumination, white balance, vignette, blur and noise (see `randomize`).
            ``None`` renders the classic phantom.
        ink_styles: with ``randomize``, draw the skin marking in a random style and ink
            (``appearance="randomized-contrast"``) instead of the classic purple arc.

    Returns:
        ``(image, objects, attrs)``: HxWx3 uint8, the lesion (and ink mark) objects, and image
        attributes (class, skin tone, hair, ...).
    """
    g = Grid.square(size)
    while True:
        cls = str(rng.choice(CLASSES))
        tone = str(rng.choice(list(SKIN_TONES), p=[0.45, 0.35, 0.2]))
        if ((cls, tone) in HELDOUT_COMBOS) == heldout:
            break
    base = np.array(SKIN_TONES[tone], np.float32) * rng.uniform(0.92, 1.08, 3)
    if randomize is not None:
        base = rnd.derm_skin(randomize, tone)
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32).copy()
    img *= 1 + 0.06 * smooth_noise(rng, size, size / 8)[..., None]  # blotchy tone
    img *= 1 + 0.03 * smooth_noise(rng, size, 1.0)[..., None]  # pores / fine texture
    img = _mix(img, base * 1.08, 0.25 * (smooth_noise(rng, size, 2.5) > 1.2))  # skin lines

    (rmin, rmax), irregularity, softness, adjectives = CLASS_SHAPE[cls]
    radius = rng.uniform(rmin, rmax)
    cx, cy = rng.uniform(-0.2, 0.2, 2)
    lesion = random_blob(
        g,
        rng,
        cx,
        cy,
        radius * rng.uniform(0.75, 1.0),
        radius,
        irregularity=irregularity,
        harmonics=7,
    )
    lesion &= g.x**2 + g.y**2 < 0.9**2
    alpha = soft_edge(lesion, softness) * (lesion | (soft_edge(lesion, softness) > 0.5))
    painted = _lesion_colour(rng, g, cls, lesion, img.copy(), g.px(radius), base)
    img = img * (1 - alpha[..., None]) + painted * alpha[..., None]
    objects = [
        PhantomObject(
            "skin_lesion",
            "skin_lesion",
            lesion,
            {"class": cls, "size": "large" if radius > 0.27 else "small", "adjectives": adjectives},
        )
    ]

    if rng.random() < 0.25:  # surgical marker next to the lesion
        layer = Image.new("L", (size, size), 0)
        ang = rng.uniform(0, 2 * np.pi)
        cxp, cyp = (np.array([cx, cy]) + 1) / 2 * size
        rr = (radius + 0.15) * size / 2
        p0 = np.array([cxp + rr * np.cos(ang), cyp + rr * np.sin(ang)])
        p2 = np.array([cxp + rr * np.cos(ang + 1.0), cyp + rr * np.sin(ang + 1.0)])
        p1 = (p0 + p2) / 2 + (p0 + p2 - 2 * np.array([cxp, cyp])) * 0.15
        colour, strength = (110, 60, 150), 0.8
        if randomize is None or not ink_styles:
            ImageDraw.Draw(layer).line(quad_bezier(p0, p1, p2), fill=255, width=max(3, size // 60))
        else:  # another pen, stroke and style around the same place
            colour, strength = rnd.derm_ink(randomize, layer, (cxp, cyp), rr, ang)
        ink = (np.asarray(layer) > 0) & ~lesion
        if ink.sum() > 20:
            img = _mix(img, colour, strength * ink)
            objects.append(PhantomObject("ink", "ink", ink))

    hair = str(rng.choice(["none", "some", "heavy"], p=[0.4, 0.4, 0.2]))
    if randomize is not None:
        img = rnd.derm_hair(randomize, img, size, hair)
        image, acq = rnd.derm_finish(randomize, img, g)
        attrs = {"class": cls, "skin_tone": tone, "hair": hair}
        return image, objects, {**attrs, "appearance": "randomized", "acquisition": acq}
    img = _draw_hair(
        rng, img, size, {"none": 0, "some": 6, "heavy": 22}[hair] + int(rng.integers(0, 4))
    )
    r2 = g.x**2 + g.y**2
    img *= (1 - rng.uniform(0.1, 0.3) * r2)[..., None]  # illumination falloff
    img *= rng.uniform(0.93, 1.07, 3)  # white balance of the device
    if rng.random() < 0.5:  # the dark circular field of a contact dermoscope
        field = soft_edge(r2 < rng.uniform(0.95, 1.15) ** 2, 2.0)
        img *= field[..., None]
    img += rng.normal(0, 2.0, img.shape)
    image = np.clip(img, 0, 255).round().astype(np.uint8)
    return image, objects, {"class": cls, "skin_tone": tone, "hair": hair}


def derm_targets(
    objects: list[PhantomObject], rng: np.random.Generator, *, heldout: bool, k: int
) -> list[Target]:
    """Targets for a dermoscopy phantom: the lesion (generic, class and attribute phrasings),
    the ink mark when drawn, and negatives."""
    lesion = objects[0]
    cls = lesion.attrs["class"]
    phrases = (
        lang.nouns("skin_lesion", heldout)
        + lang.nouns(cls, heldout)
        + lang.skin_phrases(lesion.attrs["adjectives"], heldout)
    )
    targets = [Target("lesion", ("skin_lesion",), lang.frame(rng, phrases, heldout, k))]
    has_ink = any(o.name == "ink" for o in objects)
    targets.append(
        Target(
            "ink",
            ("ink",) if has_ink else (),
            lang.frame(rng, lang.nouns("ink", heldout), heldout, k),
        )
    )
    other = str(rng.choice(["liver", "kidneys", "renal_cyst", "spine"]))
    targets.append(
        Target(f"absent_{other}", (), lang.frame(rng, lang.nouns(other, heldout), heldout, k))
    )
    return targets


def derm_caption(objects: list[PhantomObject], attrs: dict[str, Any]) -> tuple[str, str]:
    """An image-level caption and the lesion class as label."""
    cls = attrs["class"]
    text = f"dermoscopy image of {lang.article(cls)} {cls} on {attrs['skin_tone']} skin"
    if attrs["hair"] != "none":
        text += " with hair"
    if any(o.name == "ink" for o in objects):
        text += " and an ink marking"
    return text, cls
