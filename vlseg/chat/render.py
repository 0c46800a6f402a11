"""Pictures and files for chat replies: mask overlays with a legend, mask PNGs, thumbnails."""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from vlseg.data.io import atomic_write, save_mask_png

# Distinct on gray CT and on skin tones; cycled when there are more targets.
PALETTE = (
    "#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
)  # fmt: skip
DISPLAY_MIN_SIDE = 384  # small images are enlarged (nearest) for display so the legend is legible
DISPLAY_MAX_SIDE = 1024  # large ones are reduced for display; the mask files keep full resolution


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def colors_for(labels: Sequence[str]) -> dict[str, str]:
    """One palette colour per label, in order."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def to_display(
    rgb: np.ndarray, masks: Sequence[np.ndarray] = ()
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Resize an image and its masks for display.

    Args:
        rgb: H x W x 3 uint8.
        masks: H x W bool masks.

    Returns:
        h x w x 3 uint8 and h x w bool masks; the longer side lies in
        [:data:`DISPLAY_MIN_SIDE`, :data:`DISPLAY_MAX_SIDE`] where possible (small images are
        enlarged by an integer factor with nearest-neighbour, so pixels stay crisp).
    """
    h, w = rgb.shape[:2]
    scale = _display_scale(h, w)
    if scale == 1.0:
        return rgb, [np.asarray(m, dtype=bool) for m in masks]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.NEAREST if scale >= 1 else Image.BILINEAR
    out = np.asarray(Image.fromarray(rgb).resize(size, resample))
    small = [
        np.asarray(Image.fromarray(np.asarray(m, np.uint8) * 255).resize(size, Image.NEAREST)) > 127
        for m in masks
    ]
    return out, small


def render_overlay(
    rgb: np.ndarray,
    masks: Sequence[np.ndarray],
    legend: Sequence[str],
    colors: Sequence[str],
    *,
    alpha: float = 0.45,
) -> np.ndarray:
    """Blend masks onto an image, outline them, and draw a legend, at display resolution.

    Args:
        rgb: H x W x 3 uint8 image.
        masks: N masks, H x W bool (empty ones are listed in the legend only).
        legend: N legend lines, e.g. "the liver: 1,234 px".
        colors: N ``#rrggbb`` colours.
        alpha: fill opacity in [0, 1].

    Returns:
        h x w x 3 uint8 at the size :func:`to_display` gives.
    """
    if not (len(masks) == len(legend) == len(colors)):
        raise ValueError(f"{len(masks)} masks, {len(legend)} legend lines, {len(colors)} colours")
    base, small = to_display(rgb, masks)
    scale = max(1, round(base.shape[0] / rgb.shape[0]))
    out = base.astype(np.float32)
    for m, color in zip(small, colors, strict=True):
        if not m.any():
            continue
        col = np.array(hex_to_rgb(color), dtype=np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * col
        edge = m & ~ndimage.binary_erosion(m, iterations=scale)
        out[edge] = col
    img = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    if len(legend):
        _draw_legend(img, list(legend), list(colors))
    return np.asarray(img)


def _display_scale(h: int, w: int) -> float:
    side = max(h, w)
    if side < DISPLAY_MIN_SIDE:
        return float(int(np.ceil(DISPLAY_MIN_SIDE / side)))  # integer: crisp nearest upscaling
    if side > DISPLAY_MAX_SIDE:
        return DISPLAY_MAX_SIDE / side
    return 1.0


def _draw_legend(img: Image.Image, lines: list[str], colors: list[str]) -> None:
    draw = ImageDraw.Draw(img, "RGBA")
    font_px = max(11, min(img.width, img.height) // 32)
    font = _font(font_px)
    if not isinstance(font, ImageFont.FreeTypeFont) or "DejaVu" not in font.getname()[0]:
        lines = [t.replace("²", "^2") for t in lines]  # PIL's built-in font has no superscripts
    lines = [t if len(t) <= 48 else t[:47] + "…" for t in lines]
    pad, box = font_px // 2, font_px
    widths = [draw.textlength(t, font=font) for t in lines]
    width = int(max(widths)) + box + 3 * pad
    height = len(lines) * (font_px + pad) + pad
    draw.rectangle((0, 0, min(width, img.width), min(height, img.height)), fill=(0, 0, 0, 170))
    for i, (text, color) in enumerate(zip(lines, colors, strict=True)):
        y = pad + i * (font_px + pad)
        draw.rectangle((pad, y, pad + box, y + box), fill=hex_to_rgb(color))
        draw.text((2 * pad + box, y), text, fill=(255, 255, 255), font=font)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's data (a dependency) when present, else PIL's default."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size=size)
    return ImageFont.load_default(size=size)


def slug(text: str, max_len: int = 40) -> str:
    """A file-name-safe version of a prompt: "the hepatic lesion" -> "the-hepatic-lesion"."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:max_len].rstrip("-") or "target"


def write_mask_files(
    masks: Sequence[np.ndarray], labels: Sequence[str], directory: Path
) -> list[Path]:
    """One 0/255 PNG per mask at the image's own resolution, written atomically (not fsynced:
    session files live as long as the server process).

    Returns:
        The paths, named ``mask-01-the-liver.png``, ...
    """
    return [
        save_mask_png(m, directory / f"mask-{i:02d}-{slug(t)}.png", durable=False)
        for i, (m, t) in enumerate(zip(masks, labels, strict=True), start=1)
    ]


PNG_COMPRESS_LEVEL = 1  # zlib's fastest: ~3x quicker than PIL's default, files ~15% larger


def write_png(rgb: np.ndarray, path: Path) -> Path:
    """Write an H x W x 3 uint8 image as PNG (fast compression), atomically; not fsynced
    (session files live as long as the server process)."""
    with atomic_write(path, durable=False) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return path


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """An H x W uint8 slice as H x W x 3 uint8 (for overlays in colour)."""
    gray = np.asarray(gray, dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def thumbnail(rgb: np.ndarray, max_side: int = 256) -> np.ndarray:
    """Shrink an image so its longer side is at most ``max_side`` (never enlarges)."""
    im = Image.fromarray(rgb)
    im.thumbnail((max_side, max_side))
    return np.asarray(im)
