"""The manifest record and its JSON schema: one object <-> one :class:`Record`.

The schema (keys, types, relative paths) is described in :mod:`vlseg.data.manifest`; the file
layouts that hold these objects are in :mod:`vlseg.data.manifest.formats`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KNOWN_SPLITS", "MANIFEST_NAME", "Record", "record_from_dict", "record_to_dict"]

MANIFEST_NAME = "manifest.jsonl"
KNOWN_SPLITS = ("train", "val", "test")
_KNOWN_KEYS = (
    "id", "image", "mask", "text", "prompts", "label", "modality", "spacing", "split",
    "positive", "target", "caption", "slice",
)  # fmt: skip


@dataclass
class Record:
    """One referring expression set for one image (and its mask, if the target is present)."""

    id: str  # given id, else the image file's stem
    image: Path  # absolute path
    mask: Path | None  # absolute path; None for a negative (empty target)
    prompts: list[str]  # the referring expressions, in file order
    prompt_keys: list[str] = field(default_factory=list)  # source of each prompt: "text", "0", "p2"
    label: str = ""  # class label, '' if none
    modality: str = ""  # e.g. "ct", "dermoscopy"; '' if unknown
    spacing: tuple[float, float] | None = None  # mm per pixel (row, col); overrides the file's
    split: str | None = None  # train / val / test (medvlsm: the anns file name)
    positive: bool = True  # is the described thing in the image (defaults to mask is not None)
    target: str | None = None  # name of the referred structure, e.g. "liver"
    caption: str | None = None  # image-level caption
    slice_index: int | None = None  # NIfTI slice / DICOM frame; None = middle
    extra: dict[str, Any] = field(default_factory=dict)  # any other keys, unchanged
    origin: str = ""  # where it was read: "manifest.jsonl line 3", "anns/train.json item 0"
    format: str = "python"  # "jsonl", "medvlsm" or "python"

    @property
    def text(self) -> str:
        """The first expression ('' if there is none)."""
        return self.prompts[0] if self.prompts else ""

    def where(self) -> str:
        """Name the record in messages: its origin and id."""
        return f"{self.origin} (id {self.id!r})" if self.origin else f"record {self.id!r}"


def record_from_dict(obj: Any, base: Path, where: str, fmt: str) -> tuple[Record | None, list[str]]:
    """Build a record from one manifest object; return (record or None, problems).

    Args:
        obj: the parsed JSON object.
        base: directory that relative ``image``/``mask`` paths are relative to.
        where: names the object in problem messages, e.g. ``"manifest.jsonl line 3"``.
        fmt: the layout it came from, ``"jsonl"`` or ``"medvlsm"``.
    """
    if not isinstance(obj, dict):
        return None, [f"{where}: expected a JSON object, got {type(obj).__name__}"]
    errs: list[str] = []

    def opt_str(key: str) -> str | None:
        value = obj.get(key)
        if value is None or isinstance(value, str):
            return value
        errs.append(f"{where}: {key} must be a string, got {value!r}")
        return None

    image = obj.get("image")
    if not isinstance(image, str) or not image.strip():
        errs.append(f"{where}: 'image' must be a non-empty path string, got {image!r}")
    mask = obj.get("mask")
    if mask is not None and (not isinstance(mask, str) or not mask.strip()):
        errs.append(f"{where}: 'mask' must be a path string or null, got {mask!r}")
        mask = None
    prompts, keys = _parse_prompts(obj, where, errs)
    spacing = _parse_spacing(obj.get("spacing"), where, errs)
    positive = obj.get("positive")
    if positive is not None and not isinstance(positive, bool):
        errs.append(f"{where}: 'positive' must be true or false, got {positive!r}")
        positive = None
    slice_index = obj.get("slice")
    if slice_index is not None and (
        isinstance(slice_index, bool) or not isinstance(slice_index, int) or slice_index < 0
    ):
        errs.append(f"{where}: 'slice' must be a non-negative integer, got {slice_index!r}")
        slice_index = None
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, (str, int)):
        errs.append(f"{where}: 'id' must be a string, got {rid!r}")
        rid = None
    for key in obj:
        if key not in _KNOWN_KEYS:
            close = difflib.get_close_matches(key, _KNOWN_KEYS, n=1, cutoff=0.8)
            if close and close[0] not in obj:
                errs.append(f"{where}: unknown key {key!r} (did you mean {close[0]!r}?)")
    label, modality = opt_str("label"), opt_str("modality")
    split, target, caption = opt_str("split"), opt_str("target"), opt_str("caption")
    if errs or not isinstance(image, str):
        return None, errs
    image_path = _resolve(base, image)
    mask_path = _resolve(base, mask) if mask is not None else None
    record = Record(
        id=str(rid) if rid is not None else image_path.stem,
        image=image_path,
        mask=mask_path,
        prompts=prompts,
        prompt_keys=keys,
        label=label or "",
        modality=modality or "",
        spacing=spacing,
        split=split,
        positive=positive if positive is not None else mask_path is not None,
        target=target,
        caption=caption,
        slice_index=slice_index,
        extra={k: v for k, v in obj.items() if k not in _KNOWN_KEYS},
        origin=where,
        format=fmt,
    )
    return record, []


def _parse_prompts(obj: dict[str, Any], where: str, errs: list[str]) -> tuple[list[str], list[str]]:
    prompts: list[str] = []
    keys: list[str] = []
    text = obj.get("text")
    if text is not None:
        if isinstance(text, str):
            prompts.append(text)
            keys.append("text")
        else:
            errs.append(f"{where}: 'text' must be a string, got {text!r}")
    raw = obj.get("prompts")
    if raw is None:
        return prompts, keys
    if isinstance(raw, list):
        for i, p in enumerate(raw):
            if isinstance(p, str):
                prompts.append(p)
                keys.append(str(i))
            else:
                errs.append(f"{where}: prompts[{i}] must be a string, got {p!r}")
    elif isinstance(raw, dict):
        for key, value in raw.items():
            values = value if isinstance(value, list) else [value]
            for p in values:
                if not isinstance(p, str):
                    errs.append(f"{where}: prompts[{key!r}] must be a string or strings")
                elif p.strip():  # medvlsm's p0 is deliberately empty
                    prompts.append(p)
                    keys.append(str(key))
    else:
        errs.append(f"{where}: 'prompts' must be a list or an object, got {type(raw).__name__}")
    return prompts, keys


def _parse_spacing(value: Any, where: str, errs: list[str]) -> tuple[float, float] | None:
    if value is None:
        return None
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(np.isfinite(v) and v > 0 for v in value)
    )
    if not ok:
        errs.append(
            f"{where}: 'spacing' must be [row_mm, col_mm] with positive numbers, got {value!r}"
        )
        return None
    return float(value[0]), float(value[1])


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def record_to_dict(r: Record, base: Path) -> dict[str, Any]:
    """The manifest object of a record (inverse of :func:`record_from_dict`); paths under
    ``base`` become relative to it, others absolute."""

    def rel(p: Path) -> str:
        try:
            return p.resolve().relative_to(base).as_posix()
        except ValueError:
            return str(p.resolve())

    out: dict[str, Any] = {"id": r.id, "image": rel(r.image)}
    out["mask"] = rel(r.mask) if r.mask is not None else None
    keys = (
        r.prompt_keys
        if len(r.prompt_keys) == len(r.prompts)
        else [str(i) for i in range(len(r.prompts))]
    )
    if keys == ["text"]:
        out["text"] = r.prompts[0]
    elif keys == [str(i) for i in range(len(keys))]:
        out["prompts"] = list(r.prompts)
    else:
        grouped: dict[str, list[str]] = {}
        for k, p in zip(keys, r.prompts, strict=True):
            grouped.setdefault(k, []).append(p)
        out["prompts"] = {k: v[0] if len(v) == 1 else v for k, v in grouped.items()}
    optional = {
        "label": r.label or None,
        "modality": r.modality or None,
        "spacing": list(r.spacing) if r.spacing else None,
        "split": r.split,
        "target": r.target,
        "caption": r.caption,
        "slice": r.slice_index,
    }
    out.update({k: v for k, v in optional.items() if v is not None})
    if r.positive != (r.mask is not None):
        out["positive"] = r.positive
    out.update(r.extra)
    return out
