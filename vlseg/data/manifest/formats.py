"""The two on-disk layouts of a manifest: JSONL and medvlsm ``anns/{split}.json``; the writer.

See :mod:`vlseg.data.manifest` for both layouts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from vlseg.atomic import write_text
from vlseg.data.manifest.records import MANIFEST_NAME, Record, record_from_dict, record_to_dict
from vlseg.data.manifest.validation import summarize

__all__ = ["captioned_images", "read_manifest", "write_manifest"]


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
            record, errs = record_from_dict(obj, path.parent, where, "jsonl")
            problems += errs
            if record is not None:
                records.append(record)
    if problems:
        raise ValueError(summarize(f"{path}: cannot read the manifest", problems))
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
        record, errs = record_from_dict(obj, root, where, "medvlsm")
        problems += errs
        if record is not None:
            records.append(record)
    if problems:
        raise ValueError(summarize(f"{path}: cannot read the annotations", problems))
    return records


def write_manifest(records: Sequence[Record], path: str | os.PathLike[str]) -> Path:
    """Write records as a JSONL manifest, atomically; paths under its directory become relative.

    Reading the file back with :func:`read_manifest` gives equal records (up to ``origin``).
    """
    path = Path(path)
    base = path.parent.resolve()
    lines = [json.dumps(record_to_dict(r, base), ensure_ascii=False) for r in records]
    return write_text(path, "".join(line + "\n" for line in lines))
