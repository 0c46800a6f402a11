"""Datasets of (image, mask, referring expression) records: read, validate, serve to torch.

Two on-disk formats are read by :func:`read_manifest`.

**JSONL** (``manifest.jsonl``), one record per line, paths relative to the manifest's directory
(absolute paths allowed)::

    {"id": "ct_0001", "image": "images/ct_0001.png", "mask": "masks/ct_0001_lesion.png",
     "text": "the hepatic lesion", "label": "lesion", "modality": "ct", "spacing": [0.7, 0.7],
     "split": "train"}
    {"image": "images/ct_0001.png", "mask": null, "prompts": ["the renal cyst"], "split": "train"}

``text`` is one expression; ``prompts`` is a list of expressions or a dict of named ones (values
a string or a list of strings). ``mask: null`` (or no ``mask`` key) is a negative: the expression
refers to nothing in the image and the target is an empty mask. ``positive`` defaults to
``mask is not null``. Optional keys: ``id``, ``label``, ``modality``, ``spacing`` ([row, col] mm),
``split``, ``positive``, ``target``, ``caption``, ``slice`` (NIfTI slice / DICOM frame). Any
other key is kept in :attr:`Record.extra`.

**medvlsm** (github.com/naamiinepal/medvlsm, checked against its ``DATASETS.MD``,
``src/datamodules/datasets/image_text_mask.py`` and the shipped ``*_json_outputs/*.json``)::

    <dataset>/anns/{train,val,test}.json   JSON list of records (CAMUS also has testA.json, ...)
    <dataset>/images/<img_name>
    <dataset>/masks/<mask_name>            binary, 0 background / 255 foreground

A record is ``{"img_name": "x.png", "mask_name": "x.png", "prompts": {"p0": "", "p1": "...",
"p2": ["...", "..."], ...}}``, often with ``segment_id``, ``bbox``, ``cat``, ``sentences`` and
``sentences_num`` too (kept in ``extra``; ``segment_id`` becomes the id). A prompt value is a
string or a list of alternatives; ``p0`` is the empty prompt medvlsm uses for its no-text
baseline, so empty dict prompts are skipped. medvlsm's "random" prompt excludes ``p0``; here
empty prompts never enter the list, so "random" matches it. Images without the target (e.g. BUSI
"normal") have an all-zero mask file, so they load as positives with an empty mask: set
``positive`` yourself if the presence head should see them as negatives.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vlseg.data.io import atomic_write, load_image, load_mask, read_image_size
from vlseg.data.transforms import CLIP_MEAN, CLIP_STD, AugmentConfig, SegTransform

__all__ = [
    "KNOWN_SPLITS",
    "MANIFEST_NAME",
    "ManifestDataset",
    "Record",
    "collate",
    "find_problems",
    "read_manifest",
    "validate_records",
    "write_manifest",
]

MANIFEST_NAME = "manifest.jsonl"
KNOWN_SPLITS = ("train", "val", "test")
PROMPT_MODES = ("random", "first", "all")
_KNOWN_KEYS = (
    "id", "image", "mask", "text", "prompts", "label", "modality", "spacing", "split",
    "positive", "target", "caption", "slice",
)  # fmt: skip
_MAX_LISTED = 20


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


# --------------------------------------------------------------------------------------------
# reading


def read_manifest(path: str | os.PathLike[str], split: str | None = None) -> list[Record]:
    """Read records from a JSONL manifest or a medvlsm dataset directory.

    Args:
        path: a ``.jsonl`` file; a directory holding ``manifest.jsonl``; a medvlsm dataset
            directory (with ``anns/``); or one medvlsm ``anns/<split>.json`` file.
        split: keep only this split (JSONL: the ``split`` field; medvlsm: ``anns/<split>.json``).
            None reads everything.

    Returns:
        The records, in file order (medvlsm: files sorted by name).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown layout, malformed lines (all listed), or no records for ``split``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such manifest or dataset directory: {path}")
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return read_manifest(path / MANIFEST_NAME, split)
        if (path / "anns").is_dir():
            return _read_medvlsm(path, split)
        raise ValueError(
            f"{path} holds neither {MANIFEST_NAME} nor a medvlsm anns/ directory; "
            "pass a .jsonl manifest or a dataset directory"
        )
    if path.suffix.lower() == ".json" and path.parent.name == "anns":
        if split is not None and split != path.stem:
            raise ValueError(f"{path} is the {path.stem!r} split, but split={split!r} was asked")
        return _read_medvlsm_file(path, path.parent.parent)
    if path.suffix.lower() != ".jsonl":
        raise ValueError(
            f"{path}: expected a .jsonl manifest, a dataset directory, or a medvlsm "
            "anns/<split>.json file"
        )
    records = _read_jsonl(path)
    if split is not None:
        present = sorted({r.split for r in records if r.split is not None})
        records = [r for r in records if r.split == split]
        if not records:
            raise ValueError(
                f"{path}: no records with split {split!r}; splits present: {present or 'none'}"
            )
    return records


def captioned_images(path: str | os.PathLike[str], split: str | None = None) -> list[Record]:
    """One record per distinct image that has a caption (its first in file order): the
    image-caption pairs of a dataset, for retrieval indexes and contrastive alignment.

    Raises:
        ValueError: no record of ``split`` carries a caption.
    """
    seen: dict[Path, Record] = {}
    for r in read_manifest(path, split):
        if r.caption and r.image not in seen:
            seen[r.image] = r
    if not seen:
        raise ValueError(f"no captioned images in {path} (split={split})")
    return list(seen.values())


def _read_jsonl(path: Path) -> list[Record]:
    records: list[Record] = []
    problems: list[str] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            record, errs = _record_from_dict(obj, path.parent, where, "jsonl")
            problems += errs
            if record is not None:
                records.append(record)
    if problems:
        raise ValueError(_summary(f"{path}: cannot read the manifest", problems))
    return records


def _read_medvlsm(root: Path, split: str | None) -> list[Record]:
    anns = root / "anns"
    files = sorted(anns.glob("*.json"))
    available = [f.stem for f in files]
    if split is not None:
        files = [f for f in files if f.stem == split]
        if not files:
            raise ValueError(f"{anns}: no {split}.json; available splits: {available or 'none'}")
    if not files:
        raise ValueError(f"{anns} holds no .json annotation files")
    records: list[Record] = []
    for f in files:
        records += _read_medvlsm_file(f, root)
    return records


def _read_medvlsm_file(path: Path, root: Path) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    rel = f"{path.parent.name}/{path.name}"
    records: list[Record] = []
    problems: list[str] = []
    for i, item in enumerate(data):
        where = f"{rel} item {i}"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object, got {type(item).__name__}")
            continue
        obj = {k: v for k, v in item.items() if k not in ("img_name", "mask_name")}
        for key, folder, target in (
            ("img_name", "images", "image"),
            ("mask_name", "masks", "mask"),
        ):
            value = item.get(key)
            if isinstance(value, str) and value:
                obj[target] = f"{folder}/{value}"
            elif value is not None or key == "img_name":
                problems.append(f"{where}: {key} must be a non-empty string, got {value!r}")
        if "image" not in obj:
            continue
        if "prompts" not in obj and isinstance(item.get("sentences"), list):
            # Older medvlsm/CRIS-style files carry only RefCOCO-like "sentences".
            sents = [s.get("sent", "") for s in item["sentences"] if isinstance(s, dict)]
            obj["prompts"] = {f"sent{j}": sent for j, sent in enumerate(sents)}
        obj.setdefault("id", str(item.get("segment_id", Path(obj["image"]).stem)))
        obj.setdefault("split", path.stem)
        record, errs = _record_from_dict(obj, root, where, "medvlsm")
        problems += errs
        if record is not None:
            records.append(record)
    if problems:
        raise ValueError(_summary(f"{path}: cannot read the annotations", problems))
    return records


def _record_from_dict(
    obj: Any, base: Path, where: str, fmt: str
) -> tuple[Record | None, list[str]]:
    """Build a record from one manifest object; return (record or None, problems)."""
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


def write_manifest(records: Sequence[Record], path: str | os.PathLike[str]) -> Path:
    """Write records as a JSONL manifest, atomically; paths under its directory become relative.

    Reading the file back with :func:`read_manifest` gives equal records (up to ``origin``).
    """
    path = Path(path)
    base = path.parent.resolve()
    lines = [json.dumps(_record_to_dict(r, base), ensure_ascii=False) for r in records]
    with atomic_write(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _record_to_dict(r: Record, base: Path) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------
# validation


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
    key = (r.image, r.slice_index)
    if key not in sizes:
        try:
            sizes[key] = read_image_size(r.image)
        except FileNotFoundError:
            sizes[key] = f"image file not found: {r.image}"
        except (ValueError, ImportError) as exc:
            sizes[key] = f"image: {exc}"
    size = sizes[key]
    if isinstance(size, str):
        out.append(f"{where}: {size}")
    if r.mask is None:
        return out
    mkey = (r.mask, r.slice_index)
    if mkey not in masks:
        try:
            masks[mkey] = load_mask(r.mask, slice_index=r.slice_index)
        except FileNotFoundError:
            masks[mkey] = f"mask file not found: {r.mask}"
        except (ValueError, ImportError) as exc:
            masks[mkey] = f"mask: {exc}"
    mask = masks[mkey]
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
        raise ValueError(_summary(f"invalid dataset ({len(records)} records)", problems))


def _summary(head: str, problems: list[str]) -> str:
    lines = [f"{head}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
    lines += [f"  - {p}" for p in problems[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        lines.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# torch dataset


class ManifestDataset(Dataset):
    """Referring segmentation samples from a manifest, resized and normalised for the model.

    Items are dicts: ``image`` float32 ``3xHxW`` normalised; ``mask`` float32 ``1xHxW`` in
    {0, 1} (all zero for negatives); ``text`` str; ``positive`` float32 scalar tensor; ``index``
    int (dataset index); ``id`` str; ``label`` str; ``modality`` str; ``orig_size`` ``(H, W)``
    of the file; ``spacing`` ``(row_mm, col_mm)`` or None. Batch them with :func:`collate`.

    Args:
        source: a manifest path or dataset directory (see :func:`read_manifest`), or records.
        split: keep only this split.
        image_size: model input size, an int or ``(H, W)``.
        mean: normalisation mean.
        std: normalisation std.
        prompt: which expression each item uses: ``"random"`` (one per ``__getitem__``,
            reproducible from ``seed``, :meth:`set_epoch` and the index), ``"first"``, ``"all"``
            (one item per (record, expression) pair, for evaluation), an int (that position in
            every record), or a prompt key such as ``"p3"`` (medvlsm; random among its values).
        augment: train-time augmentation: False, True or an :class:`AugmentConfig`.
        seed: base seed for prompt choice and augmentation.
        validate: run :func:`validate_records` (with file checks) before use.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[Record],
        split: str | None = None,
        *,
        image_size: int | tuple[int, int] = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        prompt: str | int = "random",
        augment: bool | AugmentConfig = False,
        seed: int = 0,
        validate: bool = True,
    ) -> None:
        if isinstance(source, (str, os.PathLike)):
            records = read_manifest(source, split)
        else:
            records = [r for r in source if split is None or r.split == split]
        if not records:
            raise ValueError(f"no records{f' for split {split!r}' if split else ''} in {source!r}")
        if validate:
            splits = tuple(KNOWN_SPLITS) + ((split,) if split else ())
            validate_records(records, check_files=True, splits=splits)
        self.records = records
        self.prompt = prompt
        self.seed = int(seed)
        # In shared memory so that set_epoch also reaches persistent DataLoader workers.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.transform = SegTransform(image_size, mean=mean, std=std, augment=augment)
        self._items = self._index_items(records, prompt)

    @staticmethod
    def _index_items(records: list[Record], prompt: str | int) -> list[tuple[int, list[int]]]:
        """(record index, candidate prompt positions) per item."""
        items: list[tuple[int, list[int]]] = []
        missing: list[str] = []
        for i, r in enumerate(records):
            n = len(r.prompts)
            if isinstance(prompt, bool) or not isinstance(prompt, (str, int)):
                raise TypeError(f"prompt must be a str or int, got {type(prompt).__name__}")
            if prompt == "all":
                items += [(i, [j]) for j in range(n)]
                continue
            if prompt == "random":
                candidates = list(range(n))
            elif prompt == "first":
                candidates = [0] if n else []
            elif isinstance(prompt, int):
                candidates = [prompt] if -n <= prompt < n else []
            else:
                candidates = [j for j, k in enumerate(r.prompt_keys) if k == prompt]
            if not candidates:
                missing.append(r.where())
            items.append((i, candidates))
        if missing:
            keys = sorted({k for r in records for k in r.prompt_keys})
            raise ValueError(
                f"prompt={prompt!r} selects no expression in {len(missing)} record(s), e.g. "
                f"{missing[:3]}; use one of {list(PROMPT_MODES)}, an index, or a key in {keys}"
            )
        return items

    def set_epoch(self, epoch: int) -> None:
        """Change the random prompt choice and augmentation for a new epoch (reproducibly).

        Call it before iterating the DataLoader for that epoch; the value lives in shared memory,
        so DataLoader workers (persistent ones too) see it.
        """
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        """The epoch last given to :meth:`set_epoch` (0 at first)."""
        return int(self._epoch)

    def record_for(self, index: int) -> Record:
        """The record behind dataset item ``index`` (e.g. to read its caption or full mask)."""
        return self.records[self._items[index][0]]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        rec_idx, candidates = self._items[index]
        r = self.records[rec_idx]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        pick = (
            candidates[int(rng.integers(len(candidates)))] if len(candidates) > 1 else candidates[0]
        )
        loaded = load_image(r.image, slice_index=r.slice_index)
        if r.mask is not None:
            mask = load_mask(r.mask, slice_index=r.slice_index)
            if mask.shape != loaded.size:
                raise ValueError(
                    f"{r.where()}: mask size {mask.shape} differs from image size {loaded.size}"
                )
        else:
            mask = np.zeros(loaded.size, dtype=bool)
        image, target = self.transform(loaded.rgb, mask, rng)
        return {
            "image": image,
            "mask": target,
            "text": r.prompts[pick],
            "positive": torch.tensor(float(r.positive), dtype=torch.float32),
            "index": index,
            "id": r.id,
            "label": r.label,
            "modality": r.modality,
            "orig_size": loaded.size,
            "spacing": r.spacing if r.spacing is not None else loaded.spacing,
        }

    def __repr__(self) -> str:
        return (
            f"ManifestDataset({len(self.records)} records, {len(self)} items, "
            f"prompt={self.prompt!r}, {self.transform})"
        )


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (``image`` Bx3xHxW, ``mask`` Bx1xHxW, ``positive`` B); everything else
    (strings, ints, sizes, spacings that may be None) becomes a list."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if all(isinstance(v, torch.Tensor) for v in values):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
