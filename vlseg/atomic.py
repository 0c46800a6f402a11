"""The one save protocol: never leave a half-written file or directory where a reader looks.

Every file vlseg writes (masks, manifests, checkpoints, optimizer state, metrics JSON, YAML
configs, contact sheets, bench results) goes through :func:`atomic_write`; every directory that
must appear complete (a checkpoint, a dataset, an adapter) goes through :func:`atomic_directory`.
The protocol:

1. write into a temporary sibling of the destination (same directory, so the rename below never
   crosses a filesystem);
2. ``fsync`` the new data;
3. ``os.replace`` it over the destination (atomic on POSIX and Windows), then ``fsync`` the
   parent directory so the rename itself survives a power cut;
4. on any exception (``KeyboardInterrupt`` too) delete the temporary and leave the destination
   as it was.

Temporary files are named ``.tmp-<random>-<name>``: hidden, unique per writer, and ending with the
destination's full name so that writers which pick the format from the extension (PIL,
safetensors, nibabel) still work.

``retrieval/`` never imports vlseg, so :mod:`retrieval.store` keeps its own directory swap.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_directory",
    "atomic_write",
    "fsync_dir",
    "write_json",
    "write_text",
    "write_yaml",
]

# Read once at import (under the import lock) so atomic_write can give new files the usual
# permissions instead of mkstemp's 0600, without racing other threads on os.umask.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    Example:
        >>> with atomic_write("out/mask.png") as tmp:  # doctest: +SKIP
        ...     Image.fromarray(m).save(tmp)
        >>> with atomic_write(ckpt / "optimizer.safetensors") as tmp:  # doctest: +SKIP
        ...     safetensors.torch.save_file(state, tmp)

    Args:
        path: final destination; parent directories are created. An existing file keeps its
            permission bits; a new one gets the usual ``0o666 & ~umask``.
        durable: fsync the file and its folder (it survives a power cut). False for scratch
            files that only live as long as the process (the chat's per-turn images): readers
            still never see a half-written file, and a turn skips the fsyncs (each ~0.15 ms on
            a local SSD, tens of ms on network storage).

    Yields:
        The temporary path to write to (it exists and is empty; writers may also replace it).
        On an exception it is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=f"-{path.name}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory in a temporary sibling and swap it into place on success.

    Yields the (empty) temporary directory to fill. On success every file in it is fsynced, any
    existing ``path`` renamed away, the new directory renamed in, the parent fsynced and the old
    copy removed; on an exception the temporary directory is deleted and ``path`` is left as it
    was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        _usual_modes(tmp)
        _fsync_tree(tmp)
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _usual_modes(root: Path) -> None:
    """Give the tree the permissions a plain ``mkdir`` / ``open`` would (``0o777`` / ``0o666``
    less the umask) rather than mkdtemp's 0700 or a writer's 0600, so a checkpoint or adapter
    can be read by whoever may read its parent folder."""
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o777 & ~_UMASK)
        for name in files:
            file = os.path.join(folder, name)
            if os.path.isfile(file) and not os.path.islink(file):
                os.chmod(file, 0o666 & ~_UMASK)


def _fsync_tree(root: Path) -> None:
    """fsync every regular file below ``root`` and every directory, deepest first, so the tree
    is on disk before the rename that publishes it."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            file = os.path.join(folder, name)
            if os.path.isfile(file) and not os.path.islink(file):
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(folder)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Persist a directory's entries (creations, renames); a no-op where directories cannot be
    opened or synced (e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path


def write_json(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = False) -> Path:
    """Write ``data`` as indented JSON (2 spaces, trailing newline) atomically; returns ``path``."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def write_yaml(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as YAML (``yaml.safe_dump``, keys in insertion order) atomically."""
    import yaml

    return write_text(path, yaml.safe_dump(data, sort_keys=False))
