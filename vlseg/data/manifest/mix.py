"""One training manifest from several datasets: ``vlseg mix``.

Each source is a dataset directory with a JSONL ``manifest.jsonl`` (as ``vlseg phantoms``
writes), optionally with the fraction of its records to keep (``data/volslices:0.33``). The
records of the chosen splits are written to ``OUT/manifest.jsonl`` with absolute image and mask
paths and ids prefixed by the source's folder name (``name-2``, ``name-3`` ... for sources whose
folders share a name), so the mix refers to the sources' files without copying them and every
id stays unique (batch prediction names mask files by id).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from ...atomic import atomic_write


def parse_source(spec: str) -> tuple[Path, float]:
    """``"DIR"`` or ``"DIR:FRACTION"`` -> (directory, fraction in (0, 1])."""
    head, sep, tail = spec.rpartition(":")
    try:
        path, keep = (head, float(tail)) if sep else (spec, 1.0)
    except ValueError:  # a colon that belongs to the path
        path, keep = spec, 1.0
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"{spec!r}: the fraction after ':' must be in (0, 1], got {keep}")
    return Path(path), keep


def mix_manifests(
    out: str | os.PathLike,
    sources: list[str],
    *,
    splits: tuple[str, ...] = ("train", "val"),
    seed: int = 0,
) -> tuple[Path, dict[str, int]]:
    """Write the mixed manifest; returns its path and the records taken from each source.

    A source with a fraction below 1 keeps each record of the chosen splits with that
    probability (one draw per such record, in file order, from one generator seeded ``seed``).
    """
    rng = random.Random(seed)
    out = Path(out)
    lines, counts = [], {}
    prefixes: dict[str, Path] = {}
    ids: set[str] = set()
    for spec in sources:
        root, keep = parse_source(spec)
        if any(os.path.samefile(root, other) for other in prefixes.values() if root.exists()):
            raise ValueError(f"{root} is given twice; give each source once (with a fraction)")
        prefix, k = root.name, 1
        while prefix in prefixes:
            k += 1
            prefix = f"{root.name}-{k}"
        prefixes[prefix] = root
        manifest = root / "manifest.jsonl"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{manifest} does not exist: each source must be a dataset folder with a JSONL "
                "manifest (e.g. written by vlseg phantoms)"
            )
        taken = 0
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("split") not in splits:
                continue
            if keep < 1.0 and rng.random() > keep:
                continue
            r["image"] = os.path.abspath(root / r["image"])
            if r.get("mask"):
                r["mask"] = os.path.abspath(root / r["mask"])
            r["id"] = f"{prefix}/{r['id']}"
            if r["id"] in ids:
                raise ValueError(f"{manifest}: record id {r['id']!r} appears twice")
            ids.add(r["id"])
            lines.append(json.dumps(r))
            taken += 1
        if taken == 0:
            raise ValueError(f"{root}: no records in splits {', '.join(splits)}")
        counts[str(root)] = taken
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.jsonl"
    with atomic_write(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, counts
