"""Checks on records: the schema-level problems and the files behind them (sizes, binary masks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlseg.data.io import load_mask, read_image_size
from vlseg.data.manifest.records import KNOWN_SPLITS, Record

__all__ = ["find_problems", "summarize", "validate_records"]

_MAX_LISTED = 20


def find_problems(
    records: Sequence[Record],
    *,
    check_files: bool = True,
    splits: Sequence[str] | None = KNOWN_SPLITS,
) -> list[str]:
    """List every problem in ``records``, each message naming its record.

    Checks: empty text/prompts; a split outside ``splits`` (None skips the check; medvlsm splits
    come from file names and are always accepted); a positive without a mask. With
    ``check_files``: missing or unreadable image/mask files, image/mask size mismatch, non-binary
    masks, and negatives whose mask is not empty. Each file is read once (masks fully, images
    only their header).
    """
    problems: list[str] = []
    sizes: dict[tuple[Path, int | None], tuple[int, int] | str] = {}
    masks: dict[tuple[Path, int | None], np.ndarray | str] = {}
    for r in records:
        where = r.where()
        if not r.prompts:
            problems.append(f"{where}: no text or prompts")
        for i, p in enumerate(r.prompts):
            if not p.strip():
                problems.append(f"{where}: prompt {i} is empty")
        if splits is not None and r.split is not None and r.format != "medvlsm":
            if r.split not in splits:
                problems.append(
                    f"{where}: unknown split {r.split!r} (expected one of {list(splits)})"
                )
        if r.positive and r.mask is None:
            problems.append(f"{where}: positive record without a mask (add a mask or set positive)")
        if check_files:
            problems += _file_problems(r, where, sizes, masks)
    return problems


def _file_problems(
    r: Record,
    where: str,
    sizes: dict[tuple[Path, int | None], tuple[int, int] | str],
    masks: dict[tuple[Path, int | None], np.ndarray | str],
) -> list[str]:
    out: list[str] = []
    size = _read_once(sizes, (r.image, r.slice_index), "image", lambda: read_image_size(r.image))
    if isinstance(size, str):
        out.append(f"{where}: {size}")
    if r.mask is None:
        return out
    mask_path = r.mask
    mask = _read_once(
        masks,
        (mask_path, r.slice_index),
        "mask",
        lambda: load_mask(mask_path, slice_index=r.slice_index),
    )
    if isinstance(mask, str):
        out.append(f"{where}: {mask}")
        return out
    if isinstance(size, tuple) and mask.shape != size:
        out.append(
            f"{where}: mask size {mask.shape[0]}x{mask.shape[1]} (HxW) differs from image size "
            f"{size[0]}x{size[1]}"
        )
    if not r.positive and mask.any():
        out.append(
            f"{where}: positive is false but the mask has {int(mask.sum())} foreground pixels"
        )
    return out


def _read_once(
    cache: dict[tuple[Path, int | None], Any],
    key: tuple[Path, int | None],
    what: str,
    read: Callable[[], Any],
) -> Any:
    """``read()`` once per (file, slice); a failure is kept as its message."""
    if key not in cache:
        try:
            cache[key] = read()
        except FileNotFoundError:
            cache[key] = f"{what} file not found: {key[0]}"
        except (ValueError, ImportError) as exc:
            cache[key] = f"{what}: {exc}"
    return cache[key]


def validate_records(
    records: Sequence[Record],
    *,
    check_files: bool = True,
    splits: Sequence[str] | None = KNOWN_SPLITS,
) -> None:
    """Raise one ValueError listing the problems :func:`find_problems` finds (first 20, and the
    total count). Returns None when the records are clean."""
    problems = find_problems(records, check_files=check_files, splits=splits)
    if problems:
        raise ValueError(summarize(f"invalid dataset ({len(records)} records)", problems))


def summarize(head: str, problems: list[str]) -> str:
    lines = [f"{head}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
    lines += [f"  - {p}" for p in problems[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        lines.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    return "\n".join(lines)
