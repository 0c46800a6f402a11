"""Out-of-domain (OOD) test images for an image-level "unlike the training data" detector.

The embedded model only ever saw procedural abdominal CT slices and dermoscopy photos. Every kind
here is deliberately something else, realistic where possible: other body parts and modalities
(head CT, chest X-ray, brain MR, ultrasound, histology), real photographs that installed packages
ship, and plain synthetic pictures. Nothing is taken from ``vlseg.data.phantoms``.

Each image is a pure function of ``(seed, kind index, i, size)`` and, for natural photos, of the
photos found on this machine (see :func:`photo_paths`).

Example:
    >>> imgs = ood_images(1, size=64)
    >>> sorted({im.kind for im in imgs}) == sorted(KINDS), imgs[0].image.shape
    (True, (64, 64, 3))
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = ["KINDS", "OODImage", "ood_images", "photo_paths"]

KINDS = (
    "head_ct",
    "chest_xray",
    "brain_mri",
    "ultrasound",
    "histology",
    "natural_photo",
    "synthetic",
)

# Real photographs shipped inside packages: (top-level package, path inside it). Icons, logos and
# plots are left out on purpose, and so is gradio's duplicate test_data/cheetah1-copy.jpg.
_PHOTOS = (
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("gradio", "media_assets/images/cheetah.jpg"),
    ("gradio", "media_assets/images/cheetah1.jpg"),
    ("gradio", "media_assets/images/lion.jpg"),
    ("gradio", "media_assets/images/tower.jpg"),
    ("gradio", "test_data/cheetah2.jpg"),
)


@dataclass(frozen=True, eq=False)
class OODImage:
    """One OOD test image: ``image`` is H x W x 3 uint8; ``name`` is unique within a set."""

    name: str
    kind: str
    image: np.ndarray


def ood_images(n_per_kind: int = 10, *, seed: int = 0, size: int = 256) -> list[OODImage]:
    """``n_per_kind`` images of every kind in :data:`KINDS`, each ``size`` x ``size`` x 3 uint8.

    Image ``i`` of kind ``k`` uses ``np.random.default_rng([seed, k, i])``, so it does not depend
    on ``n_per_kind`` or on the other kinds.
    """
    photos = photo_paths()
    out = []
    for k, kind in enumerate(KINDS):
        for i in range(n_per_kind):
            rng = np.random.default_rng([seed, k, i])
            if kind == "natural_photo":
                variant, img = _natural_photo(rng, size, i, photos)
            else:
                variant, img = _RENDERERS[kind](rng, size, i)
            name = f"{kind}_{i:03d}" + (f"_{variant}" if variant else "")
            out.append(OODImage(name, kind, np.ascontiguousarray(img, dtype=np.uint8)))
    return out


def photo_paths() -> list[Path]:
    """The photographs of ``_PHOTOS`` that are installed (packages are located, not imported)."""
    found = []
    for pkg, rel in _PHOTOS:
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            continue
        for root in (spec.submodule_search_locations or []) if spec else []:
            if (path := Path(root) / rel).is_file():
                found.append(path)
                break
    return found


def _grid(size, angle=0.0, shift=(0.0, 0.0), scale=1.0):
    """(y, x) pixel-centre coordinates in [-1, 1], rotated by ``angle``, shifted and scaled."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(c, c, indexing="ij")
    ca, sa = np.cos(angle), np.sin(angle)
    return (-sa * x + ca * y - shift[1]) / scale, (ca * x + sa * y - shift[0]) / scale


def _noise(rng, shape, sigma):
    """Smooth Gaussian noise with zero mean and unit standard deviation."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-12)


def _ellipse(y, x, cy, cx, ry, rx, angle=0.0):
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * (x - cx) + sa * (y - cy), -sa * (x - cx) + ca * (y - cy)
    return (u / rx) ** 2 + (v / ry) ** 2 < 1


def _to_rgb(gray01):
    """[0, 1] float image -> H x W x 3 uint8 grey."""
    g = np.round(np.clip(gray01, 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def _font(px):
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _head_labels(rng, size):
    """Axial head slice at ventricle level; labels 0 air, 1 scalp, 2 skull, 3 grey matter,
    4 white matter, 5 CSF."""
    y, x = _grid(
        size, rng.uniform(-0.15, 0.15), rng.uniform(-0.05, 0.05, 2), rng.uniform(0.9, 1.05)
    )
    phi = np.arctan2(y, x)
    wob = sum(rng.normal(0, 0.012) * np.cos(k * phi + rng.uniform(0, 6.3)) for k in range(2, 5))
    rho = np.hypot(x / 0.68, y / 0.84) * (1 + wob)
    lab = np.zeros((size, size), np.uint8)
    lab[rho < 1] = 1
    lab[rho < 0.95] = 2
    lab[rho < 0.885] = 5  # thin CSF rim under the skull
    lab[rho < 0.87] = 3  # cortex
    lab[rho + 0.07 * _noise(rng, (size, size), size / 45) < 0.72] = 4  # white matter with gyri
    sulci = np.abs(_noise(rng, (size, size), size / 70)) < 0.1
    lab[sulci & (rho > 0.6) & (rho < 0.87)] = 5
    lab[(np.abs(x) < 0.012) & (np.abs(y) > 0.3) & (rho < 0.87)] = 5  # interhemispheric fissure
    v = rng.uniform(0.7, 1.5)  # ventricle size (age / atrophy)
    for s in (-1, 1):
        lab[_ellipse(y, x, 0.05, s * 0.24, 0.17, 0.09, s * 0.3)] = 3  # basal ganglia / thalamus
        lab[_ellipse(y, x, -0.2, s * 0.11 * v, 0.15, 0.045 * v, s * 0.35)] = 5  # frontal horn
        lab[_ellipse(y, x, 0.13, s * 0.14 * v, 0.2, 0.04 * v, -s * 0.35)] = 5  # body / trigone
    lab[_ellipse(y, x, 0.1, 0, 0.07, 0.012 * v)] = 5  # third ventricle
    return lab


def _head_ct(rng, size, i):
    """Axial non-contrast head CT in HU, brain window: bright skull ring, grey/white matter, CSF."""
    lab = _head_labels(rng, size)
    hu = np.array([-1000.0, 30, 1300, 38, 26, 6])[lab]
    hu -= 500 * (lab == 2) * (np.abs(_noise(rng, (size, size), 1.5)) < 0.5)  # diploe
    y, x = _grid(size)
    hu[(np.abs(np.hypot(x, y + 0.15) - 1.08) < 0.02) & (y > 0.6)] = 150  # head holder
    hu = ndimage.gaussian_filter(hu, 0.7) + rng.normal(0, 4, hu.shape)
    centre, width = 40 + rng.uniform(-5, 5), 80 + rng.uniform(-10, 20)
    return "", _to_rgb((hu - centre) / width + 0.5)


def _brain_mri(rng, size, i):
    """Axial brain MR, T1 / T2 / FLAIR contrast in turn: dark skull (no bone signal), bias field,
    Rician background noise."""
    contrast = ("t1", "t2", "flair")[i % 3]
    levels = {
        "t1": [0, 0.8, 0.06, 0.45, 0.72, 0.12],
        "t2": [0, 0.6, 0.05, 0.62, 0.4, 0.95],
        "flair": [0, 0.55, 0.05, 0.6, 0.42, 0.07],
    }[contrast]
    lab = _head_labels(rng, size)
    img = np.array(levels)[lab] * (1 + 0.04 * _noise(rng, (size, size), 1.0))
    img = ndimage.gaussian_filter(img, 0.8) * (1 + 0.2 * _noise(rng, (size, size), size / 4))
    sd = 0.025
    img = np.hypot(img + rng.normal(0, sd, img.shape), rng.normal(0, sd, img.shape))
    return contrast, _to_rgb(img / np.percentile(img, 99.7))


def _chest_xray(rng, size, i):
    """Frontal (PA) chest radiograph: dark lungs, ribs, clavicles, spine, heart; dense = bright."""
    y, x = _grid(size, rng.uniform(-0.05, 0.05), (0, rng.uniform(0, 0.08)), rng.uniform(0.9, 1.05))
    ax = np.abs(x)
    body = ((ax / 0.9) ** 4 + ((y - 0.2) / 1.15) ** 4 < 1) | ((ax < 0.22) & (y < -0.5))
    body |= _ellipse(y, ax, -0.62, 0.72, 0.25, 0.32)  # shoulders
    dens = 0.55 * body
    heart = _ellipse(y, x, 0.28, 0.1, 0.24, rng.uniform(0.26, 0.34), 0.25)
    dome = 0.4 + 0.5 * (ax - 0.4) ** 2 + 0.05 * (x > 0)  # right hemidiaphragm higher
    lungs = _ellipse(y, ax, 0.0, 0.42, 0.66, 0.28) & (y < dome) & (ax > 0.13) & ~heart
    vessels = 1 + 0.25 * _noise(rng, (size, size), size / 80) * (1.2 - ax)
    dens -= 0.4 * ndimage.gaussian_filter(lungs * vessels, size / 150)
    for k in range(10):  # posterior ribs arc down laterally; anterior ribs are fainter
        yk = -0.66 + 0.1 * k + 0.004 * k * k
        rib = np.abs(y - (yk - 0.4 * (ax - 0.07) + 1.1 * (ax - 0.07) ** 2)) < 0.018
        front = np.abs(y - (yk + 0.3 - 0.35 * ax)) < 0.016
        dens += body * (ax > 0.07) * (ax < 0.84) * (0.13 * rib + 0.05 * front * (ax > 0.25))
    for s in (-1, 1):
        dens += 0.3 * _ellipse(y, x, -0.73, s * 0.35, 0.028, 0.29, -s * 0.25)  # clavicle
        dens += 0.3 * (np.hypot(y + 0.72, x - s * 0.9) < 0.11)  # humeral head
    dens -= 0.12 * (ax < 0.035) * (y < -0.25)  # trachea
    dens += 0.22 * (ax < 0.065) * (0.7 + 0.3 * (np.cos(y * np.pi / 0.055) > -0.5))  # spine
    img = ndimage.gaussian_filter(dens, size / 200) + rng.normal(0, 0.015, dens.shape)
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.2) * (1 - 0.25 * (x**2 + y**2) / 2)
    pil = Image.fromarray(_to_rgb(img))
    ImageDraw.Draw(pil).text(
        (size * 0.06, size * 0.08), "R", fill=(235,) * 3, font=_font(size // 14)
    )
    return "", np.asarray(pil)


def _ultrasound(rng, size, i):
    """Convex-probe B-mode ultrasound: speckle in a fan, tissue layers, anechoic cysts and vessels,
    log compression and depth ticks, scan-converted from polar beam data."""
    nd, nl = max(size, 64), max(size * 5 // 8, 40)  # depth samples x scan lines
    d = np.linspace(0, 1, nd)[:, None] * np.ones((1, nl))
    lat = np.linspace(-1, 1, nl)[None, :] * np.ones((nd, 1))
    echo = np.exp(0.35 * _noise(rng, (nd, nl), (10, 6)))
    for _ in range(rng.integers(2, 5)):  # bright fascia / organ interfaces
        z = rng.uniform(0.1, 0.8) + 0.06 * np.sin(lat * rng.uniform(1, 4) + rng.uniform(0, 6))
        echo += 1.5 * np.exp(-(((d - z) / 0.012) ** 2))
    for _ in range(rng.integers(1, 4)):  # anechoic structures with posterior enhancement
        cz, cl, r = rng.uniform(0.25, 0.8), rng.uniform(-0.6, 0.6), rng.uniform(0.05, 0.14)
        cyst = _ellipse(d, lat, cz, cl, r, r * rng.uniform(1.5, 3))
        echo[cyst] *= 0.03
        echo *= 1 + 0.5 * ((np.abs(lat - cl) < r * 1.5) & (d > cz + r))
    speckle = ndimage.gaussian_filter(rng.standard_normal((2, nd, nl)), (0, 0.8, 1.2))
    env = echo * np.hypot(speckle[0], speckle[1]) * np.exp(-0.8 * d)
    bmode = np.log1p(30 * env / env.mean()) / np.log1p(30 * 6)
    y, x = _grid(size)  # scan conversion: apex above the image, fan opening downwards
    half, apex, r0 = np.deg2rad(rng.uniform(28, 40)), -1.25, 0.3
    r = (np.hypot(x, y - apex) - r0) / (1.9 - r0)
    th = np.arctan2(x, y - apex) / half
    img = ndimage.map_coordinates(bmode, [r * (nd - 1), (th + 1) / 2 * (nl - 1)], order=1)
    img *= (r >= 0) & (r <= 1) & (np.abs(th) <= 1)
    pil = Image.fromarray(_to_rgb(img))
    draw = ImageDraw.Draw(pil)
    for t in np.linspace(0.15, 0.95, 5):
        draw.line([(size * 0.95, size * t), (size * 0.98, size * t)], fill=(200,) * 3)
    draw.text((4, 2), f"C5-2  {rng.uniform(2, 5):.1f} MHz", fill=(200,) * 3, font=_font(size // 22))
    return "", np.asarray(pil)


_H = np.array([0.65, 0.70, 0.29])  # haematoxylin optical density (Ruifrok & Johnston)
_E = np.array([0.15, 0.85, 0.45])  # eosin (a little bluer than Ruifrok's, looks pinker)


def _blob(arr, cy, cx, ry, rx, angle, val):
    """Add a soft filled ellipse of value ``val`` to ``arr`` in place (max-blend)."""
    r = int(max(ry, rx)) + 2
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, arr.shape[0])
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, arr.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * (xx - cx) + sa * (yy - cy), -sa * (xx - cx) + ca * (yy - cy)
    soft = val * np.clip((1 - (u / rx) ** 2 - (v / ry) ** 2) * 3, 0, 1)
    arr[yy, xx] = np.maximum(arr[yy, xx], soft)


def _histology(rng, size, i):
    """H&E-stained tissue at ~20x: pink fibrous stroma, purple nuclei, glands, red blood cells."""
    sc = size / 256
    fibre_angle = rng.uniform(0, 180)
    fibres = ndimage.rotate(_noise(rng, (size, size), (0.8, 5)), fibre_angle, reshape=False)
    eos = 0.4 + 0.08 * _noise(rng, (size, size), 3) + 0.12 * fibres
    eos[_noise(rng, (size, size), size / 12) > 1.4] = 0.03  # fat / tissue tears
    hem = 0.04 + np.zeros((size, size))
    for _ in range(rng.integers(1, 4)):  # glands: lumen, epithelium, ring of nuclei
        cy, cx, r = *rng.uniform(0, size, 2), rng.uniform(25, 50) * sc
        dist = np.hypot(*np.mgrid[:size, :size] - np.array([cy, cx])[:, None, None])
        eos[dist < r] = 0.6
        hem[dist < r] = 0.12
        eos[dist < 0.55 * r] = hem[dist < 0.55 * r] = 0.02
        for a in np.arange(0, 2 * np.pi, 6 * sc / (0.8 * r)):
            ny, nx = cy + 0.8 * r * np.sin(a), cx + 0.8 * r * np.cos(a)
            _blob(hem, ny, nx, 2.4 * sc, 4.5 * sc, a, rng.uniform(0.9, 1.3))
    for _ in range(int(rng.integers(120, 220) * sc * sc)):  # stromal spindle cells, lymphocytes
        cy, cx = rng.uniform(0, size, 2)
        if rng.random() < 0.6:
            _blob(hem, cy, cx, 1.6 * sc, 5 * sc, np.deg2rad(-fibre_angle), rng.uniform(0.7, 1.1))
        else:
            _blob(hem, cy, cx, 2.8 * sc, 2.8 * sc, 0, rng.uniform(1.1, 1.5))
    for _ in range(rng.integers(5, 30)):  # red blood cells
        _blob(eos, *rng.uniform(0, size, 2), 3 * sc, 3 * sc, 0, 1.6)
    hem *= 1 + 0.25 * _noise(rng, (size, size), 0.7)  # chromatin texture
    od = hem[..., None] * _H + np.clip(eos, 0, None)[..., None] * _E
    rgb = 255 * np.exp(-1.3 * ndimage.gaussian_filter(od, (0.6, 0.6, 0)))
    return "", np.clip(rgb + rng.normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)


def _natural_photo(rng, size, i, photos):
    """A random square crop (55-100% of the short side) of a real photograph, maybe mirrored."""
    if not photos:  # matplotlib (a vlseg dependency) ships grace_hopper.jpg, so this is unexpected
        raise RuntimeError("no sample photographs found in installed packages; see _PHOTOS")
    path = photos[i % len(photos)]
    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    side = int(min(w, h) * rng.uniform(0.55, 1.0))
    x0, y0 = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
    im = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return path.stem, np.asarray(im)


_WORDS = (
    "the of and report quarterly revenue meeting agenda project invoice total please review "
    "attached summary results table section figure analysis budget customer order date"
).split()


def _synthetic(rng, size, i):
    """Non-medical synthetic pictures, in turn: cartoon cat face, text document, checkerboard,
    colour gradient, pure noise (white or smooth)."""
    variant = ("cat", "document", "checkerboard", "gradient", "noise")[i % 5]
    y, x = _grid(size, rng.uniform(0, np.pi))
    c0, c1 = rng.integers(0, 256, (2, 3))
    if variant == "checkerboard":
        n = rng.integers(3, 16)
        odd = (np.floor((x + 1) * n) + np.floor((y + 1) * n)) % 2 == 1
        return variant, np.where(odd[..., None], c0, c1).astype(np.uint8)
    if variant == "gradient":
        t = (x + 1.5) / 3 if rng.random() < 0.5 else np.hypot(x, y) / 1.5
        return variant, np.round(c0 + np.clip(t, 0, 1)[..., None] * (c1 - c0)).astype(np.uint8)
    if variant == "noise":
        if rng.random() < 0.5:
            return variant, rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        smooth = np.stack([_noise(rng, (size, size), rng.uniform(1, 8)) for _ in range(3)], -1)
        return variant, np.round(np.clip(128 + 50 * smooth, 0, 255)).astype(np.uint8)
    if variant == "document":
        pil, s = Image.new("RGB", (size, size), (250, 250, 245)), size / 256
        draw = ImageDraw.Draw(pil)
        title = " ".join(rng.choice(_WORDS, 3)).title()
        draw.text((16 * s, 12 * s), title, (0,) * 3, _font(int(18 * s)))
        for row in range(int((size - 50 * s) / (12 * s))):
            line = " ".join(rng.choice(_WORDS, 12))
            draw.text((16 * s, (42 + 12 * row) * s), line, (30,) * 3, _font(max(6, int(10 * s))))
        return variant, np.asarray(pil.rotate(rng.uniform(-4, 4), fillcolor=(90,) * 3))
    return variant, _cat(rng, size, tuple(int(v) for v in c0 // 2 + 128))


def _cat(rng, size, background):
    """Cartoon cat face: ears, round face, slit-pupil eyes, pink nose, smile, whiskers."""
    pil = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(pil)
    cx, cy, r = size * rng.uniform(0.42, 0.58), size * 0.55, size * rng.uniform(0.28, 0.34)

    def p(*pts):  # face-relative (x, y) in units of r -> pixels
        return [(cx + u * r, cy + v * r) for u, v in pts]

    fur = tuple(int(c) for c in rng.choice([[230, 140, 50], [120, 120, 120], [60, 50, 45]]))
    eye = tuple(int(c) for c in rng.choice([[120, 200, 60], [230, 200, 40], [80, 160, 220]]))
    w, black = max(1, size // 128), (0, 0, 0)
    for s in (-1, 1):
        draw.polygon(p((0.95 * s, -0.2), (0.8 * s, -1.3), (0.2 * s, -0.8)), fill=fur)
        draw.polygon(p((0.8 * s, -0.5), (0.75 * s, -1.1), (0.4 * s, -0.8)), fill=(240, 170, 180))
    draw.ellipse(p((-1, -0.85), (1, 0.85)), fill=fur)
    draw.polygon(p((-0.1, 0.12), (0.1, 0.12), (0, 0.25)), fill=(230, 120, 140))
    for s in (-1, 1):
        draw.ellipse(p((0.4 * s - 0.17, -0.32), (0.4 * s + 0.17, 0.02)), fill=eye)
        draw.ellipse(p((0.4 * s - 0.05, -0.3), (0.4 * s + 0.05, 0)), fill=black)
        draw.arc(p((0.1 * s - 0.2, 0.2), (0.1 * s + 0.2, 0.45)), 0, 180, fill=black, width=w)
        for dy in (-0.12, 0, 0.12):
            draw.line(p((0.3 * s, 0.3), (1.3 * s, 0.25 + dy)), fill=(250,) * 3, width=w)
    return np.asarray(pil)


_RENDERERS = {
    "head_ct": _head_ct,
    "chest_xray": _chest_xray,
    "brain_mri": _brain_mri,
    "ultrasound": _ultrasound,
    "histology": _histology,
    "synthetic": _synthetic,
}
