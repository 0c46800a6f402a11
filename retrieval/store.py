"""On-disk pieces of a saved index: the JSONL metadata sidecar and the atomic directory swap.

Crash-safety protocol (one writer at a time; readers may run concurrently)::

    target/                      the live index, always complete when present
    .target.tmp-<token>/         a save in progress (garbage if the writer died)
    .target.old-<token>/         the previous version, between "rename old away" and "remove old"

A save writes and fsyncs every file into a fresh ``.tmp`` sibling, then renames ``target`` to
``.old``, renames ``.tmp`` to ``target``, fsyncs the parent and removes ``.old``. A kill between the
two renames leaves no ``target`` but a complete ``.old``: :func:`resolve_dir` reads from it and the
next :func:`atomic_dir` renames it back before starting. Renames within one directory are atomic on
POSIX filesystems, so no moment exists at which neither a complete old nor a complete new version is
on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RESERVED_KEYS",
    "atomic_dir",
    "encode_rows",
    "fsync_dir",
    "fsync_file",
    "read_jsonl",
    "resolve_dir",
    "sha256_file",
    "write_jsonl",
]

RESERVED_KEYS = ("id", "score")  # added by Index.search_meta, so rows may not carry them
MARKER = "index.json"  # written last: a directory holding it is a complete index


def encode_rows(metadata: Sequence[dict[str, Any]], *, start: int = 0) -> list[str]:
    """Serialise metadata rows to single-line JSON (validated now, so a later save cannot fail).

    Args:
        metadata: one JSON-serialisable dict per vector.
        start: faiss id of the first row, used only in error messages.

    Returns:
        One compact JSON string per row, without newline.
    """
    if isinstance(metadata, (str, bytes, dict)) or not isinstance(metadata, Sequence):
        raise TypeError(f"metadata must be a list of dicts, got {type(metadata).__name__}")
    lines = []
    for i, row in enumerate(metadata):
        if not isinstance(row, dict):
            raise TypeError(f"metadata row {start + i} is a {type(row).__name__}, expected a dict")
        clash = [key for key in RESERVED_KEYS if key in row]
        if clash:
            raise ValueError(
                f"metadata row {start + i} uses reserved key {clash[0]!r} (search_meta adds "
                f"{RESERVED_KEYS}); rename it, e.g. to 'case_{clash[0]}'"
            )
        try:
            # ensure_ascii keeps U+2028 and friends escaped, so one row is always one line
            lines.append(json.dumps(row, separators=(",", ":"), allow_nan=False))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"metadata row {start + i} is not JSON-serialisable ({err}); "
                "convert numpy scalars/arrays and paths to plain str/int/float/list first"
            ) from err
    return lines


def fsync_file(path: Path) -> None:
    """Flush a file's data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (creations, renames) to disk; no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_jsonl(path: Path, lines: Iterable[str]) -> dict[str, Any]:
    """Write pre-encoded JSON lines and fsync them.

    Returns:
        ``{"sha256": hex, "bytes": int, "rows": int}`` of what was written.
    """
    digest, size, rows = hashlib.sha256(), 0, 0
    with open(path, "wb") as f:
        for line in lines:
            data = line.encode("ascii") + b"\n"
            digest.update(data)
            f.write(data)
            size += len(data)
            rows += 1
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": digest.hexdigest(), "bytes": size, "rows": rows}


def read_jsonl(path: Path) -> list[str]:
    """Read a metadata sidecar as raw JSON lines (parsed lazily by the index).

    Returns:
        One string per row; row i belongs to faiss id i.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        raise ValueError(f"{path} ends in a partial line: the file was truncated after saving")
    return data.decode("utf-8").split("\n")[:-1] if data else []


def _siblings(target: Path, tag: str) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.{tag}-*"))


def resolve_dir(target: str | os.PathLike[str]) -> Path:
    """Directory that holds the latest complete save of ``target``.

    That is ``target`` itself, or the ``.old`` sibling a writer killed mid-swap left behind.
    """
    target = Path(target)
    if (target / MARKER).is_file():
        return target
    olds = [p for p in _siblings(target, "old") if (p / MARKER).is_file()]
    if not target.exists() and olds:
        return max(olds, key=lambda p: p.stat().st_mtime_ns)
    if not target.exists():
        raise FileNotFoundError(
            f"no saved index at {target}; build one with Index.build(...).save()"
        )
    raise FileNotFoundError(f"{target} holds no {MARKER}; it is not a saved retrieval index")


def _recover(target: Path) -> None:
    """Undo the traces of a writer that was killed (single-writer assumption)."""
    if not target.exists():
        olds = [p for p in _siblings(target, "old") if (p / MARKER).is_file()]
        if olds:
            os.rename(max(olds, key=lambda p: p.stat().st_mtime_ns), target)
            fsync_dir(target.parent)
    for stale in _siblings(target, "tmp") + _siblings(target, "old"):
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temp directory next to ``target``; on clean exit swap it into place.

    Files written into the yielded directory should already be fsynced; the directory itself and the
    renames are fsynced here. On an exception the temp directory is removed and ``target`` is left
    untouched.
    """
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise ValueError(f"cannot save an index to {target}: it exists and is not a directory")
    if target.is_dir() and not (target / MARKER).is_file() and any(target.iterdir()):
        raise ValueError(
            f"refusing to replace {target}: it is a non-empty directory without {MARKER}, "
            "so not a saved index; choose another path"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    token = uuid.uuid4().hex[:12]
    tmp = target.parent / f".{target.name}.tmp-{token}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old-{token}"
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
