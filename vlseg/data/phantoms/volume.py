"""3-D abdominal CT phantom volumes: a CT volume in, 3-D masks and clinical measurements out.

A volume is a stack of axial slices painted by the classic 2-D CT renderer
(`vlseg.data.phantoms.ct`), so every slice has the tissues, Hounsfield values, scanner profile and
look the 2-D phantoms (and the models trained on them) know. What makes it a volume:

* **Coherent organs.** Every slice's anatomy is painted from a generator seeded identically, so
  every shape draw (outline harmonics, jitter, tissue values) is the same on every slice; only
  the organ scales change with the slice level, following a per-volume z-profile: an organ with
  centre ``c`` and half-height ``h`` (normalised height ``t`` in [-1, 1], +1 superior) has scale
  ``0.45 + 0.55 * sqrt(1 - u**2)`` at ``u = (t - c) / h`` and is absent where ``|u| >= 1``. The
  liver is high and long (it narrows and may end inferiorly), the spleen superior, the kidneys
  inferior (the right one lower than the left); body, spine, aorta and IVC are on every slice.
* **Hepatic lesions as 3-D blobs** (0-3 per volume): a sphere-like blob of a radius in mm,
  centred on a slice where the liver is large and inside its eroded liver, cut by each slice into
  a cross-section of radius ``r * sqrt(1 - (dz / rz)**2)``; what is painted is the blob within the
  liver. In-plane radii are the 2-D ones; a radius is at least 1.6 slice spacings, so that every
  lesion shows on three or more slices. The lobe is the one of the centre slice. As in 2-D, a
  hyperdense lesion in the left lobe only appears in ``test_heldout`` volumes, which always have
  one.
* **Anisotropic voxels**: slice spacing 2.5-5 mm, in-plane spacing FOV / size with a field of view
  of 340-420 mm.

Conventions. ``PhantomVolume.hu`` is ``S x H x W`` int16 HU; slice 0 is the most *inferior*; on
each slice row 0 is anterior and column 0 the patient's *right* (radiological display, as the 2-D
phantoms). On disk (`write_nifti`) that display stack ``D`` is the NIfTI array ``A`` of shape
``(W, H, S)`` with ``A[i, j, k] = D[k, j, i]`` and affine ``diag(-col_mm, -row_mm, slice_mm, 1)``:
voxel axes towards patient Left, Posterior, Superior (LPS voxel order, as a converted DICOM series
usually is), voxel (0, 0, 0) at the world origin. `write_dicom_series` writes the same geometry as
DICOM: ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]`` (rows run towards patient left, columns
towards posterior) and ImagePositionPatient ``[0, 0, k * slice_mm]`` for slice ``k``.

nibabel and pydicom are imported only by the writers and readers (``pip install vlseg[medical]``).
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ...atomic import atomic_directory, atomic_write
from . import randomize as rnd
from . import split_of
from .ct import (
    HU,
    CTAnatomySlice,
    _lesion_spec,
    _scanner,
    ct_caption,
    ct_targets,
    paint_ct_anatomy,
    scan_ct,
    window_ct,
)
from .sample import PhantomObject, PhantomSample, Target
from .shapes import Grid, blob, smooth_noise

__all__ = [
    "PhantomVolume",
    "ZProfile",
    "nifti_affine",
    "read_nifti_volume",
    "render_ct_volume",
    "volume_records",
    "write_dicom_series",
    "write_nifti",
    "write_volume_dataset",
]

HU_MIN, HU_MAX = -1024, 3071  # the usual 12-bit CT range
MIN_SECTION_PX = 1.5  # lesion cross-sections smaller than this radius (pixels) are not painted
_MIN_LESION_SLICES = 1.6  # the smallest lesion radius, in slices
DICOM_WINDOW = (40.0, 400.0)  # soft-tissue window written into the DICOM headers
_ORGAN_FLOOR = 0.45  # scale of an organ at the ends of its z-profile

# Generator streams of a volume (the third seed word); 2-D samples use 1-3.
_S_VOLUME, _S_ANATOMY, _S_NOISE, _S_LANGUAGE, _S_SLICE_TEXT, _S_BIAS = 6, 7, 8, 9, 10, 12
_MAX_LOOPS = 17  # the classic renderer paints 10-17 bowel loops


@dataclass(frozen=True)
class ZProfile:
    """Extent of an organ along the normalised height ``t`` (-1 inferior end, +1 superior end)."""

    centre: float
    half: float

    def weight(self, t: float) -> float:
        """``sqrt(1 - u**2)`` at ``u = (t - centre) / half``, 0 outside the organ."""
        u = (t - self.centre) / self.half
        return math.sqrt(1.0 - u * u) if abs(u) < 1.0 else 0.0

    def scale(self, t: float) -> float:
        """In-plane scale of the organ at ``t``: from 0.45 at its ends to 1 at its centre, and 0
        (absent) outside; organs never shrink to slivers the 2-D phantoms never show."""
        w = self.weight(t)
        return _ORGAN_FLOOR + (1.0 - _ORGAN_FLOOR) * w if w > 0 else 0.0


@dataclass
class PhantomVolume:
    """A rendered 3-D CT phantom with its annotations.

    Attributes:
        id: ``vol_0003`` (regular) or ``vol_h0001`` (held-out).
        hu: ``S x H x W`` int16 Hounsfield units, slices inferior -> superior, each slice in
            radiological display (row 0 anterior, column 0 the patient's right).
        spacing: ``(slice_mm, row_mm, col_mm)``.
        objects: named 3-D objects; each ``mask`` is ``S x H x W`` bool and ``attrs`` hold the
            measurements (``voxels``, ``volume_mm3``, ``slices``, ``extent_mm``; lesions also
            ``density``, ``lobe``, ``size``, ``radius_mm``, ``equivalent_diameter_mm``).
        targets: referring targets (the 2-D CT grammar; lesion superlatives by volume).
        caption: a volume-level description of the findings.
        label: ``hepatic lesion`` or ``normal liver``.
        split: ``train``, ``val``, ``test`` or ``test_heldout``.
        attrs: volume-level attributes (scanner profile, field of view, organ z-profiles, ...).
    """

    id: str
    hu: np.ndarray
    spacing: tuple[float, float, float]
    objects: list[PhantomObject]
    targets: list[Target]
    caption: str
    label: str
    split: str
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.hu.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """The NIfTI affine of the stored array (see `write_nifti`)."""
        return nifti_affine(self.spacing)

    @property
    def window(self) -> tuple[float, float]:
        """``(level, width)`` of the volume's scanner profile: the classic phantoms' display."""
        sc = self.attrs["scanner"]
        return float(sc["level"]), float(sc["width"])

    def windowed(self) -> np.ndarray:
        """``S x H x W`` uint8: every slice windowed like a classic 2-D CT phantom."""
        return window_ct(self.hu.astype(np.float32), self.attrs["scanner"])

    def object(self, name: str) -> PhantomObject:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(
            f"no object {name!r} in {self.id}; available: {[o.name for o in self.objects]}"
        )

    def target(self, key: str) -> Target:
        for t in self.targets:
            if t.key == key:
                return t
        raise KeyError(
            f"no target {key!r} in {self.id}; available: {[t.key for t in self.targets]}"
        )

    def mask(self, target: Target | str) -> np.ndarray:
        """Union mask (``S x H x W`` bool) of a target's objects; all False for a negative."""
        if isinstance(target, str):
            target = self.target(target)
        out = np.zeros(self.hu.shape, dtype=bool)
        for name in target.objects:
            out |= self.object(name).mask
        return out

    def slice_sample(self, k: int, *, prompts_per_target: int = 4) -> PhantomSample:
        """Slice ``k`` as a 2-D phantom sample: the windowed slice, the objects it cuts, and
        targets worded for that slice (so "the largest lesion" is the largest on the slice)."""
        if not 0 <= k < self.hu.shape[0]:
            raise IndexError(f"slice {k} out of range 0..{self.hu.shape[0] - 1}")
        objects = []
        for o in self.objects:
            m = o.mask[k]
            if m.any():
                attrs = {a: v for a, v in o.attrs.items() if a in ("side", "density", "lobe")}
                if o.category == "hepatic_lesion":
                    attrs.update(size=o.attrs["size"], area=int(m.sum()))
                objects.append(PhantomObject(o.name, o.category, m, attrs))
        a = self.attrs
        heldout = self.split == "test_heldout"
        rng = np.random.default_rng([a["seed"], a["index"], _S_SLICE_TEXT, int(heldout), int(k)])
        targets = ct_targets(objects, rng, heldout=heldout, k=prompts_per_target)
        caption, label = ct_caption(objects)
        image = window_ct(self.hu[k].astype(np.float32), a["scanner"])
        return PhantomSample(
            id=f"{self.id}_s{k:03d}",
            modality="ct",
            image=image,
            objects=objects,
            targets=targets,
            caption=caption,
            label=label,
            spacing=(self.spacing[1], self.spacing[2]),
            split=self.split,
            attrs={"volume": self.id, "slice": int(k), "scanner": a["scanner"]},
        )

    def save_nifti(self, path: str | os.PathLike[str]) -> Path:
        """Write the HU volume as int16 NIfTI (``.nii.gz`` or ``.nii``), atomically. The header's
        cal_min/cal_max hold the scanner window, so viewers (and `vlseg.data.io.load_image`)
        show the classic look."""
        level, width = self.window
        return write_nifti(path, self.hu, self.spacing, dtype=np.int16, window=(level, width))

    def save_mask_nifti(self, target: Target | str, path: str | os.PathLike[str]) -> Path:
        """Write a target's mask as uint8 (0/1) NIfTI with the volume's layout and affine."""
        return write_nifti(path, self.mask(target), self.spacing, dtype=np.uint8)

    def save_dicom(
        self, out_dir: str | os.PathLike[str], *, shuffle_names: bool = False
    ) -> list[Path]:
        """Write the HU volume as a DICOM CT series (see `write_dicom_series`)."""
        return write_dicom_series(
            out_dir,
            self.hu,
            self.spacing,
            shuffle_names=shuffle_names,
            seed=_volume_uid_seed(self.attrs),
            patient_id=f"PHANTOM_{self.id.upper()}",
        )


# ----------------------------------------------------------------------------------------------
# Rendering


def _volume_uid_seed(attrs: dict[str, Any]) -> int:
    return int(attrs["seed"]) * 1_000_003 + int(attrs["index"]) * 2 + int(attrs["heldout"])


def _draw_profiles(vrng: np.random.Generator) -> dict[str, ZProfile]:
    liver = ZProfile(float(vrng.uniform(0.2, 0.4)), float(vrng.uniform(1.1, 1.3)))
    spleen = ZProfile(float(vrng.uniform(0.35, 0.55)), float(vrng.uniform(0.55, 0.7)))
    left = ZProfile(float(vrng.uniform(-0.45, -0.3)), float(vrng.uniform(0.5, 0.62)))
    right = ZProfile(left.centre - float(vrng.uniform(0.08, 0.2)), float(vrng.uniform(0.5, 0.62)))
    return {"liver": liver, "spleen": spleen, "kidney_right": right, "kidney_left": left}


def _slice_heights(n_slices: int) -> np.ndarray:
    """Normalised height of each slice centre, -1 (inferior) to +1 (superior)."""
    return -1.0 + (2.0 * np.arange(n_slices) + 1.0) / n_slices


def _slice_anatomy(
    t: float, prof: dict[str, ZProfile], base: dict[str, float]
) -> tuple[rnd.CTAnatomy, tuple[float, float]]:
    """Organ scales and presence at height ``t``, and the renal sinus scale of each kidney."""

    def scale(name: str) -> tuple[float, bool]:
        s = prof[name].scale(t)
        # An absent organ keeps a valid size for its (discarded) shape draw.
        return (base[name] * s, True) if s > 0 else (base[name], False)

    liver_s, liver_on = scale("liver")
    spleen_s, spleen_on = scale("spleen")
    kr_s, kr_on = scale("kidney_right")
    kl_s, kl_on = scale("kidney_left")
    level = "upper" if t > 1 / 3 else ("lower" if t < -1 / 3 else "mid")
    an = rnd.CTAnatomy(
        level=level,
        liver_s=liver_s,
        spleen_s=spleen_s,
        kidney_s=(kr_s, kl_s),
        liver_present=liver_on,
        spleen_present=spleen_on,
        kidneys_present=(kr_on, kl_on),
    )
    # The renal sinus (hilum) is widest mid-kidney and absent towards the poles.
    sinus = tuple(
        float(np.clip((prof[n].weight(t) - 0.4) / 0.6, 0.0, 1.0))
        for n in ("kidney_right", "kidney_left")
    )
    return an, sinus  # type: ignore[return-value]


@dataclass
class _Lesion:
    mask: np.ndarray  # S x H x W bool, painted voxels
    core: np.ndarray | None  # S x H x W bool necrotic core, or None
    value: float  # painted HU
    core_drop: float
    attrs: dict[str, Any]


def _lesion_sections(
    g: Grid,
    livers: np.ndarray,
    centre: tuple[int, float, float],
    radii: tuple[float, float, float],
    shape: tuple[float, np.ndarray, np.ndarray],
    fraction: float = 1.0,
) -> np.ndarray:
    """The blob's cross-sections on every slice, within the liver (``S x H x W`` bool).

    ``centre`` is ``(slice, x, y)``, ``radii`` ``(rx, ry, rz_slices)``, ``shape`` ``(angle,
    wobble, phases)``; ``fraction`` scales the whole blob (0.5 for a necrotic core)."""
    kc, cx, cy = centre
    rx, ry, rz = radii
    angle, wobble, phases = shape
    out = np.zeros(livers.shape, dtype=bool)
    reach = int(math.ceil(rz * fraction))
    for dz in range(-reach, reach + 1):
        k = kc + dz
        f2 = fraction * fraction - (dz / rz) ** 2
        if not 0 <= k < livers.shape[0] or f2 <= 0:
            continue
        f = math.sqrt(f2)
        if g.px(min(rx, ry) * f) < MIN_SECTION_PX:
            continue
        out[k] = blob(g, cx, cy, rx * f, ry * f, angle=angle, wobble=wobble, phases=phases)
        out[k] &= livers[k]
    return out


def _place_lesion_3d(
    vrng: np.random.Generator,
    g: Grid,
    slices: list[CTAnatomySlice],
    livers: np.ndarray,
    big: np.ndarray,
    lobe: str,
    radius: float,
    rz: float,
    taken: np.ndarray,
    eroded: dict[tuple[int, int], np.ndarray],
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Rejection-sample a 3-D lesion: centre inside the eroded liver of a large-liver slice, in
    the chosen lobe there, the centre section wholly in the liver, at least two slices, connected
    and not touching the lesions already placed."""
    r_px = g.px(radius)
    if r_px < MIN_SECTION_PX:
        return None
    iterations = max(2, int(r_px) + 2)
    ball = ndimage.generate_binary_structure(3, 3)
    for _ in range(20):
        kc = int(big[vrng.integers(len(big))])
        if (kc, iterations) not in eroded:
            eroded[kc, iterations] = ndimage.binary_erosion(livers[kc], iterations=iterations)
        side = slices[kc].lobe_left if lobe == "left" else ~slices[kc].lobe_left
        candidates = np.argwhere(eroded[kc, iterations] & side & ~taken[kc])
        if len(candidates) == 0:
            continue
        r, c = candidates[vrng.integers(len(candidates))]
        cx, cy = float(g.x[r, c]), float(g.y[r, c])
        rx = radius * float(vrng.uniform(0.85, 1.15))
        # The shape draws of `random_blob` (irregularity 0.12, 3 harmonics).
        decay = 1.0 / np.arange(1, 4) ** 0.7
        wobble = 0.12 * decay * vrng.uniform(0.3, 1.0, 3)
        phases = vrng.uniform(0, 2 * np.pi, 3)
        angle = float(vrng.uniform(0, np.pi))
        whole = blob(g, cx, cy, rx, radius, angle=angle, wobble=wobble, phases=phases)
        if (whole & ~livers[kc]).any():
            continue
        params = ((kc, cx, cy), (rx, radius, rz), (angle, wobble, phases))
        mask = _lesion_sections(g, livers, *params)
        labels, _ = ndimage.label(mask, structure=ball)
        if labels[kc, r, c] == 0:  # the centre section is too small to paint
            continue
        mask = labels == labels[kc, r, c]  # one piece, even if the liver cuts a section off
        present = np.flatnonzero(mask.any(axis=(1, 2)))
        if len(present) < 2:
            continue
        lo = np.maximum(np.argwhere(mask).min(0) - 3, 0)
        hi = np.argwhere(mask).max(0) + 4
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        if (ndimage.binary_dilation(mask[box], structure=ball, iterations=2) & taken[box]).any():
            continue
        return mask, {"params": params, "centre_px": (kc, int(r), int(c))}
    return None


def _place_lesions(
    vrng: np.random.Generator,
    g: Grid,
    slices: list[CTAnatomySlice],
    heldout: bool,
    half_fov_mm: float,
    slice_mm: float,
) -> list[_Lesion]:
    livers = np.stack([s.liver for s in slices])
    areas = livers.sum(axis=(1, 2))
    n_lesions = int(vrng.choice([0, 1, 1, 2, 2, 3]))
    if heldout:
        n_lesions = max(n_lesions, 1)
    if areas.max() == 0:
        return []
    big = np.flatnonzero(areas >= 0.6 * areas.max())
    taken = np.zeros(livers.shape, dtype=bool)
    eroded: dict[tuple[int, int], np.ndarray] = {}
    lesions = []
    for i in range(n_lesions):
        force = ("hyper", "left") if (heldout and i == 0) else None
        density, lobe, size_cls = _lesion_spec(vrng, heldout, force)
        if size_cls == "large":
            radius = float(vrng.uniform(0.07, 0.1))
        else:
            radius = float(vrng.uniform(0.035, 0.055))
        if lobe == "left":
            radius *= 0.8  # the left lobe is thinner
        # Spherical, and at least 1.6 slices in radius: every lesion shows on 3 or more slices.
        radius_mm = max(radius * half_fov_mm, _MIN_LESION_SLICES * slice_mm)
        radius = radius_mm / half_fov_mm
        contrast = float(vrng.uniform(35, 60) if density == "hypo" else vrng.uniform(40, 70))
        necrotic = size_cls == "large" and density == "hypo" and vrng.random() < 0.5
        core_drop = float(vrng.uniform(10, 25)) if necrotic else 0.0
        placed = _place_lesion_3d(
            vrng, g, slices, livers, big, lobe, radius, radius_mm / slice_mm, taken, eroded
        )
        if placed is None:
            continue
        mask, info = placed
        taken |= mask
        core = None
        if necrotic:
            core = _lesion_sections(g, livers, *info["params"], fraction=0.5) & mask
            core = core if core.any() else None
        value = HU["liver"] + (-contrast if density == "hypo" else contrast)
        attrs = {
            "density": density,
            "lobe": lobe,
            "size": size_cls,
            "radius_mm": round(radius_mm, 2),
            "contrast_hu": round(value - HU["liver"], 1),
            "necrotic_core": core is not None,
            "centre": list(info["centre_px"]),
        }
        lesions.append(_Lesion(mask, core, value, core_drop, attrs))
    return lesions


def _measure(mask: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, Any]:
    """Clinical measurements of a 3-D mask: voxels, volume, slice range and craniocaudal
    extent."""
    voxels = int(mask.sum())
    present = np.flatnonzero(mask.any(axis=(1, 2)))
    slice_mm, row_mm, col_mm = spacing
    volume = voxels * slice_mm * row_mm * col_mm
    return {
        "voxels": voxels,
        "volume_mm3": round(volume, 1),
        "slices": [int(present[0]), int(present[-1])] if len(present) else None,
        "extent_mm": round(len(present) * slice_mm, 2),
    }


def render_ct_volume(
    seed: int,
    index: int = 0,
    *,
    n_slices: int = 32,
    size: int = 256,
    heldout: bool = False,
    prompts_per_target: int = 4,
) -> PhantomVolume:
    """Render one abdominal CT phantom volume; a pure function of its arguments (same bytes on
    every call).

    Args:
        seed: dataset seed.
        index: volume index among the regular volumes, or among the held-out ones when
            ``heldout``.
        n_slices: number of axial slices (>= 2).
        size: in-plane side in pixels (>= 64).
        heldout: a ``test_heldout`` volume: held-out phrasings, and one hyperdense lesion in
            the left lobe (a combination the other splits never show).
        prompts_per_target: phrasings per target.

    Returns:
        The volume; see `PhantomVolume` and this module's docstring for the conventions.
    """
    if size < 64:
        raise ValueError(f"size={size} is too small to draw anatomy; use 64 or more")
    if n_slices < 2:
        raise ValueError(f"n_slices={n_slices}: a volume needs at least 2 slices")
    kind = int(bool(heldout))
    vrng = np.random.default_rng([seed, index, _S_VOLUME, kind])
    fov_mm = round(float(vrng.uniform(340.0, 420.0)), 1)
    px_mm = round(fov_mm / size, 4)
    slice_mm = round(float(vrng.uniform(2.5, 5.0)), 2)
    spacing = (slice_mm, px_mm, px_mm)
    prof = _draw_profiles(vrng)
    base = {
        "liver": float(vrng.uniform(0.95, 1.08)),
        "spleen": float(vrng.uniform(0.9, 1.12)),
        "kidney_right": float(vrng.uniform(0.92, 1.08)),
        "kidney_left": float(vrng.uniform(0.92, 1.08)),
    }
    rib_drift = float(vrng.uniform(-0.15, 0.15))  # radians over the half-height
    bowel_drift = vrng.uniform(-0.1, 0.1, (_MAX_LOOPS, 2))  # normalised, over the half-height
    scanner = _scanner(vrng)
    # One bias field for the whole volume (a per-slice field would band the reformats).
    bias = smooth_noise(np.random.default_rng([seed, index, _S_BIAS, kind]), size, size / 4)

    heights = _slice_heights(n_slices)
    slices = []
    for t in heights:
        an, sinus = _slice_anatomy(float(t), prof, base)
        # The same generator state on every slice: identical shape draws, coherent organs.
        arng = np.random.default_rng([seed, index, _S_ANATOMY, kind])
        slices.append(
            paint_ct_anatomy(
                arng,
                size,
                an,
                fixed_draws=True,
                sinus_scale=sinus,
                rib_shift=rib_drift * t,
                bowel_shift=bowel_drift * t,
            )
        )
    g = slices[0].grid
    lesions = _place_lesions(vrng, g, slices, heldout, fov_mm / 2.0, slice_mm)

    hu = np.empty((n_slices, size, size), dtype=np.int16)
    for k, s in enumerate(slices):
        raw = s.hu
        for les in lesions:
            raw[les.mask[k]] = les.value
            if les.core is not None:
                raw[les.core[k]] -= les.core_drop  # necrotic centre
        nrng = np.random.default_rng([seed, index, _S_NOISE, kind, k])
        scanned = scan_ct(raw, s.inner, scanner, nrng, bias=bias)
        hu[k] = np.clip(np.rint(scanned), HU_MIN, HU_MAX).astype(np.int16)

    objects = []
    for i, organ in enumerate(slices[0].objects):
        mask = np.stack([s.objects[i].mask for s in slices])
        if not mask.any():
            continue
        objects.append(
            PhantomObject(
                organ.name, organ.category, mask, {**organ.attrs, **_measure(mask, spacing)}
            )
        )
    for n, les in enumerate(lesions, start=1):
        m = _measure(les.mask, spacing)
        m["equivalent_diameter_mm"] = round((6.0 * m["volume_mm3"] / math.pi) ** (1 / 3), 2)
        # "area" (here the voxel count) is what the 2-D grammar ranks largest/smallest by.
        attrs = {**les.attrs, **m, "area": m["voxels"]}
        objects.append(PhantomObject(f"hepatic_lesion_{n}", "hepatic_lesion", les.mask, attrs))

    trng = np.random.default_rng([seed, index, _S_LANGUAGE, kind])
    targets = ct_targets(objects, trng, heldout=heldout, k=prompts_per_target)
    caption, label = ct_caption(objects)
    caption = caption.replace("abdominal CT slice", "abdominal CT volume", 1)
    return PhantomVolume(
        id=f"vol_h{index:04d}" if heldout else f"vol_{index:04d}",
        hu=hu,
        spacing=spacing,
        objects=objects,
        targets=targets,
        caption=caption,
        label=label,
        split="test_heldout" if heldout else split_of(seed, index),
        attrs={
            "seed": int(seed),
            "index": int(index),
            "heldout": bool(heldout),
            "fov_mm": fov_mm,
            "scanner": scanner,
            "z_profiles": {k: [p.centre, p.half] for k, p in prof.items()},
            "organ_scale": base,
            "n_lesions": len(lesions),
        },
    )


# ----------------------------------------------------------------------------------------------
# NIfTI


def nifti_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """``diag(-col_mm, -row_mm, slice_mm, 1)``: the affine of a display stack stored by
    `write_nifti` (voxel axes towards patient Left, Posterior, Superior)."""
    slice_mm, row_mm, col_mm = (float(v) for v in spacing)
    return np.diag([-col_mm, -row_mm, slice_mm, 1.0])


def _nifti_suffix_ok(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def write_nifti(
    path: str | os.PathLike[str],
    array_dhw: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    dtype: Any,
    window: tuple[float, float] | None = None,
) -> Path:
    """Write an ``S x H x W`` display stack as NIfTI-1, atomically.

    The stored array ``A`` has shape ``(W, H, S)`` with ``A[i, j, k] = D[k, j, i]``, and the
    affine is ``diag(-col_mm, -row_mm, slice_mm, 1)`` (qform and sform, code 1 "scanner"), so
    a viewer shows row 0 anterior, column 0 the patient's right, slice 0 inferior.

    Args:
        path: a ``.nii.gz`` (gzipped) or ``.nii`` file.
        array_dhw: the stack, slices inferior -> superior.
        spacing: ``(slice_mm, row_mm, col_mm)``.
        dtype: stored type, e.g. ``np.int16`` for HU, ``np.uint8`` for masks.
        window: ``(level, width)`` stored as cal_min/cal_max (the display window).
    """
    import nibabel as nib

    path = Path(path)
    if not _nifti_suffix_ok(path):
        raise ValueError(f"{path}: a NIfTI file name ends with .nii.gz or .nii")
    array_dhw = np.asarray(array_dhw)
    if array_dhw.ndim != 3:
        raise ValueError(f"expected an S x H x W array, got shape {array_dhw.shape}")
    data = np.asarray(array_dhw.transpose(2, 1, 0), dtype=dtype)
    affine = nifti_affine(spacing)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    if window is not None:
        level, width = window
        img.header["cal_min"] = level - width / 2.0
        img.header["cal_max"] = level + width / 2.0
    with atomic_write(path) as tmp:  # tmp ends with path's name, so nibabel keeps the format
        nib.save(img, tmp)
    return path


def read_nifti_volume(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a 3-D NIfTI file (any orientation) as an ``S x H x W`` display stack and its
    ``(slice_mm, row_mm, col_mm)`` spacing; the inverse of `write_nifti`."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))  # voxel axes R, A, S
    if len(img.shape) != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got shape {img.shape}")
    ras = np.asarray(img.dataobj)
    stack = np.ascontiguousarray(ras[::-1, ::-1, :].transpose(2, 1, 0))  # L, P, S -> S, P, L
    # Header zooms are float32: round off the float32 noise (3.81 is stored as 3.8099999...).
    zx, zy, zz = (round(float(z), 6) for z in img.header.get_zooms()[:3])
    return stack, (zz, zy, zx)


# ----------------------------------------------------------------------------------------------
# DICOM


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def write_dicom_series(
    out_dir: str | os.PathLike[str],
    hu_stack: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    shuffle_names: bool = False,
    seed: int = 0,
    series_uid: str | None = None,
    patient_id: str = "PHANTOM",
) -> list[Path]:
    """Write an ``S x H x W`` HU stack as a DICOM CT series: one CT Image Storage file per slice.

    Geometry: ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]`` (DICOM LPS: along a row towards
    the patient's left, down a column towards posterior, i.e. the radiological display) and
    ImagePositionPatient ``[0, 0, k * slice_mm]`` for slice ``k`` (slice 0 inferior); the same
    world coordinates as `write_nifti`'s affine. Pixels are stored as uint16 ``HU + 1024`` with
    RescaleSlope 1 and RescaleIntercept -1024, Explicit VR Little Endian.

    Args:
        out_dir: directory for the files (created).
        hu_stack: integer HU in [-1024, 64511].
        spacing: ``(slice_mm, row_mm, col_mm)``.
        shuffle_names: name the files by a random permutation of the slice order (``seed``),
            so a reader has to sort by position, as with real exports.
        seed: seeds the UIDs (reproducible output) and the name permutation.
        series_uid: SeriesInstanceUID; default derived from ``seed`` and ``patient_id``.
        patient_id: PatientID and PatientName.

    Returns:
        The written paths, in slice order (inferior first).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        CTImageStorage,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    hu_stack = np.asarray(hu_stack)
    if hu_stack.ndim != 3:
        raise ValueError(f"expected an S x H x W array, got shape {hu_stack.shape}")
    if not np.issubdtype(hu_stack.dtype, np.integer):
        raise ValueError(f"HU values must be integers, got dtype {hu_stack.dtype}")
    lo, hi = int(hu_stack.min()), int(hu_stack.max())
    if lo < -1024 or hi > 65535 - 1024:
        raise ValueError(f"HU range [{lo}, {hi}] does not fit uint16 with intercept -1024")
    n, rows, cols = hu_stack.shape
    slice_mm, row_mm, col_mm = (float(v) for v in spacing)

    def uid(*parts: object) -> str:
        return generate_uid(
            entropy_srcs=[
                "|".join(["vlseg-phantom", patient_id, str(seed)] + [str(p) for p in parts])
            ]
        )

    study_uid = uid("study")
    series_uid = series_uid or uid("series")
    frame_uid = uid("frame", series_uid)
    order = np.random.default_rng([seed, 11]).permutation(n) if shuffle_names else np.arange(n)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        sop_uid = uid("instance", series_uid, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.Manufacturer = "vlseg phantom"
        ds.SeriesDescription = "abdominal CT phantom"
        ds.PatientName = patient_id
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyDate = ""
        ds.StudyTime = ""
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = ""
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        z = _ds(k * slice_mm)
        ds.ImagePositionPatient = ["0", "0", z]
        ds.SliceLocation = z
        ds.SliceThickness = _ds(slice_mm)
        ds.SpacingBetweenSlices = _ds(slice_mm)
        ds.PixelSpacing = [_ds(row_mm), _ds(col_mm)]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = (_ds(v) for v in DICOM_WINDOW)
        ds.PixelData = (hu_stack[k].astype(np.int32) + 1024).astype("<u2").tobytes()
        path = out / f"IM{int(order[k]):05d}.dcm"
        with atomic_write(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# Datasets


def volume_records(volume: PhantomVolume) -> list[dict[str, Any]]:
    """Manifest records of a volume, one per target, paths relative to the dataset root.

    Same keys as the 2-D phantoms' records (``spacing`` omitted: the NIfTI header has it) plus
    ``"volume": true``; a record refers to the whole volume, its mask is a NIfTI volume too.
    """
    records = []
    for t in volume.targets:
        records.append(
            {
                "id": f"{volume.id}/{t.key}",
                "image": f"volumes/{volume.id}.nii.gz",
                "mask": f"masks/{volume.id}/{t.key}.nii.gz" if t.positive else None,
                "prompts": t.prompts,
                "label": volume.label,
                "modality": "ct",
                "split": volume.split,
                "positive": t.positive,
                "target": t.key,
                "caption": volume.caption,
                "sample": volume.id,
                "volume": True,
            }
        )
    return records


def _render_job(args: tuple) -> PhantomVolume:
    seed, index, heldout, n_slices, size, prompts = args
    return render_ct_volume(
        seed,
        index,
        n_slices=n_slices,
        size=size,
        heldout=heldout,
        prompts_per_target=prompts,
    )


def _check_dataset_args(out, n: int, size: int, n_slices: int, overwrite: bool) -> Path:
    """The output path of a volume dataset after checking the arguments every writer takes."""
    out = Path(out)
    if n < 1:
        raise ValueError(f"n={n}: ask for at least one volume")
    if size < 64:
        raise ValueError(f"size={size} is too small to draw anatomy; use 64 or more")
    if n_slices < 2:
        raise ValueError(f"n_slices={n_slices}: a volume needs at least 2 slices")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pick another --out or pass --overwrite")
    return out


def write_volume_dataset(
    out: str | os.PathLike[str],
    n: int,
    seed: int,
    *,
    n_slices: int = 32,
    size: int = 256,
    prompts: int = 4,
    heldout: int = 0,
    overwrite: bool = False,
    quiet: bool = False,
    dicom: bool = False,
    workers: int = 1,
) -> Path:
    """Write a volume dataset, atomically (built in a temporary sibling, renamed into place).

    Layout: ``volumes/vol_XXXX.nii.gz`` (int16 HU), ``masks/vol_XXXX/<target>.nii.gz`` (uint8,
    same layout and affine) for each positive target, ``manifest.jsonl`` (`volume_records`),
    ``dataset.json``; with ``dicom``, also ``dicom/vol_XXXX/IMxxxxx.dcm`` (a DICOM series per
    volume, file names shuffled). Regular volumes are split train/val/test 80/10/10
    (`split_of`); ``heldout`` more volumes (``vol_hXXXX``) form ``test_heldout``.

    Args:
        out: dataset directory (must not exist unless ``overwrite``).
        n: regular volumes.
        seed: dataset seed.
        n_slices, size: volume shape (slices, in-plane pixels).
        prompts: phrasings per target.
        heldout: held-out volumes.
        overwrite: replace an existing directory.
        quiet: no progress bar.
        dicom: also write DICOM series.
        workers: parallel rendering processes (the output does not depend on it).
    """
    out = _check_dataset_args(out, n, size, n_slices, overwrite)
    if heldout < 0:
        raise ValueError(f"heldout={heldout} must be >= 0")
    jobs = [(seed, i, False, n_slices, size, prompts) for i in range(n)]
    jobs += [(seed, i, True, n_slices, size, prompts) for i in range(heldout)]
    bar = tqdm(total=len(jobs), desc="volumes", unit="vol", disable=quiet)
    with atomic_directory(out) as tmp:
        (tmp / "volumes").mkdir()
        (tmp / "masks").mkdir()
        lines = []
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            rendered = pool.map(_render_job, jobs) if pool else map(_render_job, jobs)
            for vol in rendered:
                vol.save_nifti(tmp / "volumes" / f"{vol.id}.nii.gz")
                for t, rec in zip(vol.targets, volume_records(vol), strict=True):
                    if t.positive:
                        vol.save_mask_nifti(t, tmp / rec["mask"])
                    lines.append(json.dumps(rec, sort_keys=True))
                if dicom:
                    vol.save_dicom(tmp / "dicom" / vol.id, shuffle_names=True)
                bar.update()
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            bar.close()
        (tmp / "manifest.jsonl").write_text("".join(line + "\n" for line in lines))
        meta = {
            "generator": "vlseg.data.phantoms.volume",
            "kind": "volume",
            "modality": "ct",
            "n": n,
            "n_heldout": heldout,
            "seed": seed,
            "n_slices": n_slices,
            "size": size,
            "prompts_per_target": prompts,
            "dicom": dicom,
            "layout": "NIfTI (W, H, S), affine diag(-col_mm, -row_mm, slice_mm, 1): LPS voxel axes",
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def _slice_job(args: tuple) -> list[PhantomSample]:
    seed, index, n_slices, size, prompts = args
    vol = render_ct_volume(seed, index, n_slices=n_slices, size=size, prompts_per_target=prompts)
    return [vol.slice_sample(k, prompts_per_target=prompts) for k in range(n_slices)]


def write_slice_dataset(
    out: str | os.PathLike[str],
    n: int,
    seed: int,
    *,
    n_slices: int = 16,
    size: int = 256,
    prompts: int = 4,
    overwrite: bool = False,
    quiet: bool = False,
    workers: int = 1,
) -> Path:
    """Write every axial slice of ``n`` regular volumes as a 2-D phantom dataset, atomically.

    The layout is that of `vlseg.data.phantoms.write_dataset` (``images/``, ``masks/``,
    ``manifest.jsonl``, ``dataset.json``): one sample per slice (`PhantomVolume.slice_sample`,
    id ``vol_XXXX_sNNN``), in the split of its volume, so all slices of a volume stay in one split.
    Towards the ends of a volume organs leave the slice (the spleen superiorly, the kidneys
    inferiorly, the liver may end): the organ targets of such a slice are negatives. Slices are
    the classic 2-D look; ``dataset.json`` records ``"kind": "volume-slices"``.
    """
    from . import write_samples

    out = _check_dataset_args(out, n, size, n_slices, overwrite)
    jobs = [(seed, i, n_slices, size, prompts) for i in range(n)]
    bar = tqdm(total=len(jobs), desc="volumes", unit="vol", disable=quiet)

    def slices():
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            rendered = pool.map(_slice_job, jobs) if pool else map(_slice_job, jobs)
            for samples in rendered:
                yield from samples
                bar.update()
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            bar.close()

    with atomic_directory(out) as tmp:
        write_samples(tmp, slices())
        meta = {
            "generator": "vlseg.data.phantoms.volume",
            "kind": "volume-slices",
            "modality": "ct",
            "n": n,
            "n_heldout": 0,
            "seed": seed,
            "n_slices": n_slices,
            "size": size,
            "prompts_per_target": prompts,
            "appearance": "classic",
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out
