"""Abdominal CT slice phantoms.

The renderer paints a Hounsfield-unit map (air, subcutaneous fat, muscle, liver, spleen, kidneys
with renal sinus fat, contrast-filled aorta and IVC, a vertebra with cortical rim and canal, ribs,
bowel with gas and fluid), blurs it with a scanner point-spread function, adds correlated noise and
a low-frequency bias, and windows it to 8 bits. Images follow the radiological convention: the
patient's right is on the image left.

Held-out combination: a *hyperdense* lesion in the *left* lobe never appears outside
``test_heldout``; that split always contains one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from . import language as lang
from . import randomize as rnd
from .sample import PhantomObject, Target
from .shapes import Grid, centroid, random_blob, smooth_noise

# Portal-venous phase contrast-enhanced values.
HU = {
    "air": -1000.0,
    "fat": -95.0,
    "muscle": 55.0,
    "liver": 105.0,
    "spleen": 115.0,
    "kidney": 170.0,
    "aorta": 190.0,
    "ivc": 130.0,
    "bone": 280.0,
    "cortex": 700.0,
    "csf": 15.0,
    "cyst": 5.0,
    "bowel_wall": 45.0,
    "bowel_fluid": 15.0,
}
HELDOUT_COMBOS = {("hyper", "left")}


def _scanner(rng: np.random.Generator) -> dict[str, float]:
    """A random "scanner" profile: noise, sharpness, calibration offset and display window."""
    return {
        "noise_hu": float(rng.uniform(6, 22)),
        "blur_px": float(rng.uniform(0.4, 1.1)),
        "offset_hu": float(rng.uniform(-12, 12)),
        "level": float(rng.uniform(30, 60)),
        "width": float(rng.uniform(350, 450)),
        "bias_hu": float(rng.uniform(0, 15)),
    }


def _lesion_spec(rng: np.random.Generator, heldout: bool, force: tuple[str, str] | None):
    if force is not None:
        density, lobe = force
    else:
        while True:
            density = "hypo" if rng.random() < 0.65 else "hyper"
            lobe = "right" if rng.random() < 0.65 else "left"
            if heldout or (density, lobe) not in HELDOUT_COMBOS:
                break
    size = "large" if rng.random() < 0.4 else "small"
    return density, lobe, size


def _place_lesion(rng, grid, liver, lobe_of, lobe, radius, taken) -> np.ndarray | None:
    """Rejection-sample a lesion fully inside the liver's chosen lobe, not touching others."""
    inner = ndimage.binary_erosion(liver, iterations=max(2, int(grid.px(radius)) + 2))
    candidates = np.argwhere(inner & (lobe_of == (lobe == "left")) & ~taken)
    if len(candidates) == 0:
        return None
    for _ in range(20):
        r, c = candidates[rng.integers(len(candidates))]
        cx, cy = float(grid.x[r, c]), float(grid.y[r, c])
        shape = random_blob(
            grid,
            rng,
            cx,
            cy,
            radius * rng.uniform(0.85, 1.15),
            radius,
            irregularity=0.12,
            harmonics=3,
        )
        if (
            not (shape & ~liver).any()
            and not (ndimage.binary_dilation(shape, iterations=2) & taken).any()
        ):
            return shape
    return None


@dataclass
class CTAnatomySlice:
    """The anatomy of one CT slice as painted by `paint_ct_anatomy`, before lesions and scanner.

    Attributes:
        grid: the normalised pixel grid.
        hu: HxW float32 Hounsfield map (noise-free).
        lab: HxW uint8 tissue labels (``randomize.T_*``).
        inner: HxW bool, the body inside the subcutaneous fat (where organ texture goes).
        liver: HxW bool liver mask (empty at a level without liver).
        falciform_x: normalised x of the lobe boundary; pixels right of it (image right, the
            patient's left) belong to the left lobe. 0.0 when the slice has no liver.
        kidneys: ``{"right": mask, "left": mask}``.
        objects: the annotated organs: liver, spleen, right and left kidney, spine, aorta.
    """

    grid: Grid
    hu: np.ndarray
    lab: np.ndarray
    inner: np.ndarray
    liver: np.ndarray
    falciform_x: float
    kidneys: dict[str, np.ndarray]
    objects: list[PhantomObject]

    @property
    def lobe_left(self) -> np.ndarray:
        """HxW bool: the left-lobe side of the falciform line (patient's left, image right)."""
        return self.grid.x > self.falciform_x


def paint_ct_anatomy(
    rng: np.random.Generator,
    size: int,
    an: rnd.CTAnatomy,
    *,
    skip_empty_kidneys: bool = False,
    fixed_draws: bool = False,
    sinus_scale: tuple[float, float] = (1.0, 1.0),
    rib_shift: float = 0.0,
    bowel_shift: np.ndarray | None = None,
) -> CTAnatomySlice:
    """Paint body, bowel, organs, vessels, spine and ribs of one slice (the organ part of
    `render_ct`, with the same draws in the same order).

    Args:
        rng: the anatomy generator.
        size: side length in pixels.
        an: organ scales, offsets and presence flags.
        skip_empty_kidneys: skip an absent kidney without drawing its sinus (randomized 2-D
            phantoms).
        fixed_draws: make the same number of draws whatever is present, so that every slice
            of a volume rendered from equal generators gets the same shapes and tissue values
            (3-D phantoms); an absent kidney then still draws its (unpainted) sinus.
        sinus_scale: renal sinus size per kidney (right, left), relative to the classic one;
            0 paints no sinus (a renal pole), its draws are still made.
        rib_shift: angle (radians) added to every rib's position on the body wall, to let the
            ribs drift between the slices of a volume.
        bowel_shift: ``N x 2`` offsets (normalised x, y) of the first ``N`` bowel loops, to let
            them wander between the slices of a volume.
    """
    irr = an.irregularity
    g = Grid.square(size)
    hu = np.full((size, size), HU["air"], dtype=np.float32)
    lab = np.zeros((size, size), np.uint8)  # tissue labels (rnd.T_*), painted alongside hu
    j = lambda s: rng.uniform(-s, s)  # noqa: E731  small jitter

    body = random_blob(
        g,
        rng,
        j(0.03),
        0.06 + j(0.03),
        (0.86 + j(0.05)) * an.body_sx,
        (0.64 + j(0.05)) * an.body_sy,
        irregularity=0.03,
        harmonics=3,
        angle=j(0.05),
    )
    fat_depth = int(g.px(rng.uniform(0.04, 0.1)))
    if an.fat is not None:
        fat_depth = int(g.px(an.fat))
    inner = ndimage.binary_erosion(body, iterations=max(1, fat_depth))
    hu[body] = HU["fat"]
    lab[body] = rnd.T_FAT
    # Abdominal wall muscle ring under the subcutaneous fat.
    wall = inner & ~ndimage.binary_erosion(inner, iterations=max(2, int(g.px(0.04))))
    hu[inner] = HU["fat"] + 25  # mesenteric and retroperitoneal fat
    hu[wall] = HU["muscle"]
    lab[inner] = rnd.T_FAT_INNER
    lab[wall] = rnd.T_MUSCLE
    # Bowel loops: soft-tissue walls around fluid, some with gas, filling the anterior abdomen.
    for n_loop in range(rng.integers(10, 18)):
        cx, cy = j(0.55), -0.05 + j(0.3)
        if bowel_shift is not None and n_loop < len(bowel_shift):
            cx, cy = cx + float(bowel_shift[n_loop][0]), cy + float(bowel_shift[n_loop][1])
        loop = (
            random_blob(g, rng, cx, cy, 0.07 + j(0.025), 0.06 + j(0.02), irregularity=0.12)
            & inner
            & ~wall
        )
        hu[loop] = HU["bowel_wall"] + j(10)
        lumen = ndimage.binary_erosion(loop, iterations=2)
        hu[lumen] = HU["bowel_fluid"] + j(15)
        lab[loop] = rnd.T_BOWEL_WALL
        lab[lumen] = rnd.T_FLUID0 + n_loop
        if rng.random() < 0.4 and (lumen.any() or fixed_draws):
            at = centroid(lumen, g) if lumen.any() else (0.0, 0.0)
            gas = random_blob(g, rng, *at, 0.03, 0.025, irregularity=0.1)
            hu[gas & lumen] = HU["air"] + 100
            lab[gas & lumen] = rnd.T_GAS

    # Organs, painted back to front so later ones occlude earlier ones.
    liver = random_blob(
        g,
        rng,
        -0.36 + j(0.04) + an.liver_dx,
        -0.12 + j(0.04) + an.liver_dy,
        (0.36 + j(0.04)) * an.liver_s,
        (0.34 + j(0.04)) * an.liver_s,
        irregularity=0.06 * irr,
        angle=j(0.3),
    )
    left_lobe = random_blob(
        g,
        rng,
        0.02 + j(0.04) + an.liver_dx,
        -0.3 + j(0.03) + an.liver_dy,
        (0.26 + j(0.03)) * an.liver_s,
        (0.13 + j(0.02)) * an.liver_s,
        irregularity=0.05 * irr,
        angle=0.25 + j(0.1),
    )
    liver = (liver | left_lobe) & inner
    if not an.liver_present:  # slice level below the liver
        liver = np.zeros_like(liver)
    # The lobe boundary, for "left/right lobe"; the patient's left lobe lies on the image right.
    falciform_x = float(np.percentile(g.x[liver], 70)) if liver.any() else 0.0
    spleen = (
        random_blob(
            g,
            rng,
            0.55 + j(0.04) + an.spleen_dx,
            -0.05 + j(0.05) + an.spleen_dy,
            (0.13 + j(0.02)) * an.spleen_s,
            (0.22 + j(0.03)) * an.spleen_s,
            irregularity=0.07 * irr,
            angle=0.5 + j(0.2),
        )
        & inner
        & ~liver
    )
    if not an.spleen_present:  # slice level below the spleen
        spleen = np.zeros_like(spleen)
    kidneys = {}
    for i, (side, sx) in enumerate((("right", -1.0), ("left", 1.0))):
        k = random_blob(
            g,
            rng,
            sx * (0.34 + j(0.03)),
            0.32 + j(0.04) + an.kidney_dy[i],
            (0.1 + j(0.015)) * an.kidney_s[i],
            (0.14 + j(0.015)) * an.kidney_s[i],
            irregularity=0.04 * irr,
            angle=sx * (0.35 + j(0.15)),
        )
        kidneys[side] = k & inner & ~liver & ~spleen
        if not an.kidneys_present[i]:  # slice level above this kidney
            kidneys[side] = np.zeros_like(k)
    vert_c = (j(0.02), 0.37 + j(0.03))
    vbody = random_blob(
        g, rng, *vert_c, 0.12 + j(0.01), 0.1 + j(0.01), irregularity=0.02, angle=0.0
    )
    arch = random_blob(g, rng, vert_c[0], vert_c[1] + 0.17, 0.1, 0.1, irregularity=0.25)
    canal = random_blob(g, rng, vert_c[0], vert_c[1] + 0.14, 0.045, 0.04, irregularity=0.02)
    spine = (vbody | arch) & inner
    aorta = (
        random_blob(
            g, rng, vert_c[0] + 0.09 + j(0.02), vert_c[1] - 0.17, 0.05, 0.05, irregularity=0.02
        )
        & inner
        & ~spine
    )
    ivc = (
        random_blob(g, rng, vert_c[0] - 0.12, vert_c[1] - 0.17, 0.05, 0.035, irregularity=0.05)
        & inner
        & ~liver
        & ~spine
        & ~aorta
    )

    hu[spine] = HU["bone"]
    hu[spine & ~ndimage.binary_erosion(spine, iterations=2)] = HU["cortex"]
    hu[canal & spine] = HU["csf"]
    lab[spine] = rnd.T_BONE
    lab[spine & ~ndimage.binary_erosion(spine, iterations=2)] = rnd.T_CORTEX
    lab[canal & spine] = rnd.T_CSF
    # Psoas muscles beside the vertebra.
    for sx in (-1.0, 1.0):
        psoas = (
            random_blob(
                g, rng, vert_c[0] + sx * 0.18, vert_c[1] + 0.02, 0.07, 0.09, irregularity=0.05
            )
            & inner
            & ~spine
        )
        hu[psoas] = HU["muscle"]
        lab[psoas] = rnd.T_PSOAS
    hu[liver] = HU["liver"] + j(10)
    hu[spleen] = HU["spleen"] + j(10)
    lab[liver] = rnd.T_LIVER
    lab[spleen] = rnd.T_SPLEEN
    for k, scale in zip(kidneys.values(), sinus_scale, strict=True):
        if skip_empty_kidneys and not k.any():  # a slice level without this kidney
            continue
        hu[k] = HU["kidney"] + j(20)
        # An absent kidney (fixed_draws only) still draws its sinus, painted nowhere.
        kx, ky = centroid(k, g) if (k.any() or not fixed_draws) else (0.0, 0.0)
        if scale == 1.0:
            sinus = random_blob(g, rng, kx * 0.85, ky, 0.035, 0.06, irregularity=0.1) & k
        else:  # a smaller sinus towards the renal poles, none at the pole itself
            s = scale if scale > 0 else 1.0
            sinus = random_blob(g, rng, kx * 0.85, ky, 0.035 * s, 0.06 * s, irregularity=0.1) & k
            if scale <= 0:
                sinus = np.zeros_like(sinus)
        hu[sinus] = HU["fat"] + 60  # renal sinus fat at the hilum, facing the spine
        lab[k] = rnd.T_KIDNEY
        lab[sinus] = rnd.T_SINUS
    hu[aorta] = HU["aorta"] + j(30)
    hu[ivc] = HU["ivc"] + j(20)
    lab[aorta] = rnd.T_AORTA
    lab[ivc] = rnd.T_IVC
    # Ribs: small bright ovals just inside the body wall.
    for ang in rng.uniform(0.15 * np.pi, 0.85 * np.pi, rng.integers(4, 8)):
        if rib_shift:
            ang = ang + rib_shift
        side = 1 if rng.random() < 0.5 else -1
        rx, ry = 0.8 * np.cos(ang) * side, 0.02 + 0.55 * np.sin(ang)
        rib = random_blob(g, rng, rx, ry - 0.45, 0.035, 0.025, irregularity=0.05)
        hu[rib & body & ~inner] = HU["cortex"] * 0.7
        lab[rib & body & ~inner] = rnd.T_RIB

    objects = [
        PhantomObject("liver", "liver", liver),
        PhantomObject("spleen", "spleen", spleen),
        PhantomObject("kidney_right", "kidney", kidneys["right"], {"side": "right"}),
        PhantomObject("kidney_left", "kidney", kidneys["left"], {"side": "left"}),
        PhantomObject("spine", "spine", spine),
        PhantomObject("aorta", "aorta", aorta),
    ]
    return CTAnatomySlice(g, hu, lab, inner, liver, falciform_x, kidneys, objects)


def scan_ct(
    hu: np.ndarray,
    inner: np.ndarray,
    scanner: dict[str, float],
    rng: np.random.Generator,
    *,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """The scanner's view of a noise-free Hounsfield map: organ texture, blur (point-spread
    function), correlated noise, a smooth bias field and the calibration offset (float32 HU).

    ``bias`` is a unit bias field to use instead of drawing one (a volume shares one field
    across its slices); it is scaled by the scanner's ``bias_hu``.
    """
    size = hu.shape[0]
    hu = hu + 4.0 * smooth_noise(rng, size, 3) * inner
    hu = ndimage.gaussian_filter(hu, scanner["blur_px"])
    hu += scanner["noise_hu"] * smooth_noise(rng, size, 0.7)
    if bias is None:
        bias = smooth_noise(rng, size, size / 4)
    hu += scanner["bias_hu"] * bias + scanner["offset_hu"]
    return hu


def window_ct(hu: np.ndarray, scanner: dict[str, float]) -> np.ndarray:
    """Window Hounsfield units to 8 bits with the scanner's display level and width."""
    lo = scanner["level"] - scanner["width"] / 2
    return np.clip((hu - lo) / scanner["width"] * 255.0, 0, 255).round().astype(np.uint8)


def render_ct(
    rng: np.random.Generator,
    size: int,
    *,
    heldout: bool = False,
    randomize: np.random.Generator | None = None,
    synthetic_contrast: bool = False,
) -> tuple[np.ndarray, list[PhantomObject], dict[str, Any]]:
    """Render one abdominal CT slice.

    Args:
        rng: random generator (the only source of randomness of the classic phantom).
        size: output side length in pixels.
        heldout: allow (and include one) held-out attribute combination.
        randomize: a separate generator for domain randomisation (``appearance="randomized"``):
            it varies the anatomy (slice level, habitus, organ size and position), then renders
            the tissue label map with a random appearance and geometry
            (`randomize.ct_appearance`). ``None`` renders the classic phantom.
        synthetic_contrast: with ``randomize``, also arbitrary tissue contrasts and display curves
            (``appearance="randomized-contrast"``).

    Returns:
        ``(image, objects, attrs)``: an HxW uint8 windowed image, the annotated objects and the
        image-level attributes (scanner profile, lesion count).
    """
    an = rnd.ct_anatomy(randomize) if randomize is not None else rnd.CTAnatomy()
    a = paint_ct_anatomy(rng, size, an, skip_empty_kidneys=randomize is not None)
    g, hu, lab, liver, kidneys = a.grid, a.hu, a.lab, a.liver, a.kidneys
    lobe_left = a.lobe_left
    objects = a.objects
    n_organs = len(objects)

    # Hepatic lesions; one held-out (hyperdense, left lobe) lesion is forced into test_heldout.
    n_lesions = int(rng.choice([0, 1, 1, 2, 2, 3]))
    if heldout:
        n_lesions = max(n_lesions, 1)
    taken = np.zeros_like(liver)
    for i in range(n_lesions):
        force = ("hyper", "left") if (heldout and i == 0) else None
        density, lobe, size_cls = _lesion_spec(rng, heldout, force)
        radius = rng.uniform(0.07, 0.1) if size_cls == "large" else rng.uniform(0.035, 0.055)
        if lobe == "left":
            radius *= 0.8  # the left lobe is thinner
        shape = _place_lesion(rng, g, liver, lobe_left, lobe, radius, taken)
        if shape is None:
            continue
        taken |= shape
        contrast = rng.uniform(35, 60) if density == "hypo" else rng.uniform(40, 70)
        hu[shape] = HU["liver"] + (-contrast if density == "hypo" else contrast)
        n_lesion = len(objects) - n_organs
        lab[shape] = rnd.T_LESION0 + n_lesion
        if size_cls == "large" and density == "hypo" and rng.random() < 0.5:
            core = ndimage.binary_erosion(shape, iterations=int(g.px(radius * 0.5)))
            hu[core] -= rng.uniform(10, 25)  # necrotic centre
            lab[core] = rnd.T_CORE0 + n_lesion
        objects.append(
            PhantomObject(
                f"hepatic_lesion_{n_lesion + 1}",
                "hepatic_lesion",
                shape,
                {"density": density, "lobe": lobe, "size": size_cls, "area": int(shape.sum())},
            )
        )

    if rng.random() < 0.3:
        side = "right" if rng.random() < 0.5 else "left"
        kid = kidneys[side]
        cands = np.argwhere(ndimage.binary_erosion(kid, iterations=3))
        if len(cands):
            r, c = cands[rng.integers(len(cands))]
            cyst = (
                random_blob(
                    g, rng, float(g.x[r, c]), float(g.y[r, c]), 0.045, 0.04, irregularity=0.02
                )
                & kid
            )
            hu[cyst] = HU["cyst"]
            lab[cyst] = rnd.T_CYST
            objects.append(PhantomObject("renal_cyst", "renal_cyst", cyst, {"side": side}))

    if randomize is not None:
        objects = [o for o in objects if o.mask.any()]  # organs absent at this slice level
        return rnd.ct_appearance(randomize, lab, objects, an, synthetic_contrast=synthetic_contrast)

    scanner = _scanner(rng)
    image = window_ct(scan_ct(hu, a.inner, scanner, rng), scanner)
    n_found = sum(o.category == "hepatic_lesion" for o in objects)
    return image, objects, {"scanner": scanner, "n_lesions": n_found}


def _group(objs: list[PhantomObject]) -> tuple[str, ...]:
    return tuple(o.name for o in objs)


def ct_targets(
    objects: list[PhantomObject], rng: np.random.Generator, *, heldout: bool, k: int
) -> list[Target]:
    """Referring targets for a CT phantom: organs, lesion groups by attribute, and negatives."""
    by = {o.name: o for o in objects}
    t: list[Target] = []

    def add(key: str, objs: list[PhantomObject], noun_phrases: list[str]) -> None:
        t.append(Target(key, _group(objs), lang.frame(rng, noun_phrases, heldout, k)))

    # An organ missing from ``objects`` (randomized phantoms: a slice level without it, or cropped
    # out of the field of view) becomes a negative. The classic phantom always has them all.
    for kind in ("liver", "spleen", "spine", "aorta"):
        add(kind, [by[kind]] if kind in by else [], lang.nouns(kind, heldout))
    kids = [by[n] for n in ("kidney_right", "kidney_left") if n in by]
    add("kidneys", kids, lang.nouns("kidneys", heldout))
    if len(kids) == 1:
        t.pop()  # "both kidneys" with one in view is neither a positive nor a negative
    for side in ("right", "left"):
        name = f"kidney_{side}"
        add(name, [by[name]] if name in by else [], lang.nouns(name, heldout))
    add(
        "renal_cyst",
        [by["renal_cyst"]] if "renal_cyst" in by else [],
        lang.nouns("renal_cyst", heldout),
    )

    lesions = [o for o in objects if o.category == "hepatic_lesion"]
    add("lesions", lesions, lang.lesion_phrases(count=max(1, len(lesions)), heldout=heldout))
    if len(lesions) > 1:
        areas = [o.attrs["area"] for o in lesions]
        for sup, idx in (("largest", int(np.argmax(areas))), ("smallest", int(np.argmin(areas)))):
            add(
                f"lesion_{sup}",
                [lesions[idx]],
                lang.lesion_phrases(count=1, heldout=heldout, superlative=sup),
            )
    for lobe in ("right", "left"):
        sel = [o for o in lesions if o.attrs["lobe"] == lobe]
        add(
            f"lesions_{lobe}_lobe",
            sel,
            lang.lesion_phrases(count=max(1, len(sel)), heldout=heldout, lobe=lobe),
        )
    for dens in ("hypo", "hyper"):
        sel = [o for o in lesions if o.attrs["density"] == dens]
        add(
            f"lesions_{dens}dense",
            sel,
            lang.lesion_phrases(count=max(1, len(sel)), heldout=heldout, density=dens),
        )
        for lobe in ("right", "left"):
            both = [o for o in sel if o.attrs["lobe"] == lobe]
            # Compositions are asked about when present, or as negatives only when the lesion
            # density exists elsewhere (a harder "not here" case). A combination reserved for
            # test_heldout is never worded in the other splits, not even as a negative: it
            # would teach "this combination is never there" instead of leaving it unseen.
            # (Its phrasings are still drawn, so every later draw of the sample stays the same.)
            if both or (sel and rng.random() < 0.5):
                add(
                    f"lesions_{dens}dense_{lobe}_lobe",
                    both,
                    lang.lesion_phrases(
                        count=max(1, len(both)), heldout=heldout, density=dens, lobe=lobe
                    ),
                )
                if not heldout and (dens, lobe) in HELDOUT_COMBOS:
                    t.pop()
    # One cross-modality negative.
    other = str(rng.choice(["skin_lesion", "melanoma", "ink"]))
    add(f"absent_{other}", [], lang.nouns(other, heldout))
    return t


def ct_caption(objects: list[PhantomObject]) -> tuple[str, str]:
    """An image-level caption and class label (``hepatic lesion`` or ``normal liver``)."""
    lesions = [o for o in objects if o.category == "hepatic_lesion"]
    if lesions:
        dens = sorted({o.attrs["density"] for o in lesions})
        lobes = sorted({o.attrs["lobe"] for o in lesions}, reverse=True)
        noun = "hepatic lesion" if len(lesions) == 1 else "hepatic lesions"
        dens_txt = " and ".join(f"{d}dense" for d in dens)
        lobe_txt = " and ".join(lobes) + (" lobes" if len(lobes) > 1 else " lobe")
        text = (
            f"abdominal CT slice with {lang.count_word(len(lesions))} {dens_txt} {noun} "
            f"in the {lobe_txt} of the liver"
        )
        label = "hepatic lesion"
    else:
        text, label = "abdominal CT slice with a normal liver", "normal liver"
    cyst = [o for o in objects if o.category == "renal_cyst"]
    if cyst:
        text += f" and a cyst in the {cyst[0].attrs['side']} kidney"
    return text, label
