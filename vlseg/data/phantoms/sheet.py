"""Contact sheets: phantom images with their mask outlines and referring expressions."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ...atomic import atomic_write
from .sample import PhantomSample

COLOURS = [
    (255, 64, 64),
    (64, 220, 64),
    (80, 140, 255),
    (255, 200, 0),
    (255, 0, 255),
    (0, 230, 230),
    (255, 140, 0),
    (180, 120, 255),
]


def outline(image: np.ndarray, masks: list[np.ndarray], colours=COLOURS) -> np.ndarray:
    """Draw the 1-px boundary of each mask on an HxW or HxWx3 uint8 image; returns HxWx3."""
    rgb = np.stack([image] * 3, -1) if image.ndim == 2 else image.copy()
    for i in reversed(range(len(masks))):  # the first mask's colour wins where outlines meet
        m = masks[i]
        edge = m & ~ndimage.binary_erosion(m)
        rgb[edge] = colours[i % len(colours)]
    return rgb


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single fixed-size bitmap font
        return ImageFont.load_default()


def contact_sheet(
    samples: Iterable[PhantomSample],
    path: str | os.PathLike,
    *,
    cols: int = 4,
    tile: int = 256,
    max_targets: int = 3,
) -> Path:
    """Write a PNG grid: each tile shows an image with up to ``max_targets`` positive targets
    outlined in colour and one expression per target printed beneath in the same colour, plus one
    negative expression in grey.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("contact_sheet needs at least one sample")
    font = _font(max(10, tile // 22))
    line_h = max(12, tile // 18)
    text_h = line_h * (max_targets + 2) + 4
    rows = (len(samples) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile, rows * (tile + text_h)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for i, s in enumerate(samples):
        pos = [t for t in s.targets if t.positive]
        # Prefer showing the most specific targets (lesions) before whole organs.
        pos.sort(key=lambda t: ("lesion" not in t.key, t.key))
        pos = pos[:max_targets]
        neg = [t for t in s.targets if not t.positive][:1]
        img = outline(s.image, [s.mask(t) for t in pos])
        img = np.asarray(Image.fromarray(img).resize((tile, tile), Image.Resampling.NEAREST))
        x0, y0 = (i % cols) * tile, (i // cols) * (tile + text_h)
        sheet.paste(Image.fromarray(img), (x0, y0))
        y = y0 + tile + 2
        draw.text((x0 + 4, y), f"{s.id} [{s.split}] {s.label}", fill=(230, 230, 230), font=font)
        for j, t in enumerate(pos):
            y += line_h
            draw.text((x0 + 4, y), f'"{t.prompts[0]}"', fill=COLOURS[j % len(COLOURS)], font=font)
        for t in neg:
            y += line_h
            draw.text(
                (x0 + 4, y), f'"{t.prompts[0]}" -> not present', fill=(150, 150, 150), font=font
            )
    path = Path(path)
    with atomic_write(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
