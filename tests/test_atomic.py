"""vlseg.atomic: the one save protocol (temp sibling, fsync, rename; nothing left on failure)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from vlseg import atomic
from vlseg.atomic import atomic_directory, atomic_write, write_json, write_text, write_yaml


def test_atomic_write_leaves_no_temp_file_on_an_exception(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_write(target) as tmp:
                tmp.write_text("half")
                raise exc
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no .tmp-* left
    with pytest.raises(RuntimeError):  # a new file that never got written does not appear
        with atomic_write(tmp_path / "sub" / "new.json"):
            raise RuntimeError("boom")
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_write_keeps_the_extension_for_format_sniffing_writers(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    state = {"exp_avg": np.arange(6, dtype=np.float32).reshape(2, 3)}
    with atomic_write(tmp_path / "ckpt" / "optimizer.safetensors") as tmp:
        assert tmp.parent == tmp_path / "ckpt" and tmp.name.endswith("optimizer.safetensors")
        assert tmp.name.startswith(".tmp-")
        save_file(state, str(tmp))
    np.testing.assert_array_equal(
        load_file(str(tmp_path / "ckpt" / "optimizer.safetensors"))["exp_avg"], state["exp_avg"]
    )
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["optimizer.safetensors"]


def test_atomic_write_keeps_permissions(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    write_text(target, "x")
    assert (target.stat().st_mode & 0o777) != 0o600  # the usual umask, not mkstemp's 0600
    target.chmod(0o640)
    write_text(target, "y")
    assert (target.stat().st_mode & 0o777) == 0o640 and target.read_text() == "y"


def test_write_json_text_yaml(tmp_path: Path) -> None:
    data = {"b": 1, "a": [1.5, None], "name": "hépatique"}
    out = write_json(tmp_path / "r.json", data)
    assert out.read_text() == json.dumps(data, indent=2) + "\n"
    assert json.loads(write_json(tmp_path / "s.json", data, sort_keys=True).read_text()) == data
    assert write_text(tmp_path / "t.txt", "ü\n").read_text(encoding="utf-8") == "ü\n"
    text = write_yaml(tmp_path / "c.yaml", data).read_text(encoding="utf-8")
    assert yaml.safe_load(text) == data and text.index("b:") < text.index("a:")  # order kept


def test_config_save_yaml_goes_through_the_protocol(tmp_path: Path) -> None:
    from vlseg.config import load_yaml, save_yaml

    save_yaml({"epochs": 3, "lr": 0.001}, tmp_path / "cfg.yaml")
    assert load_yaml(tmp_path / "cfg.yaml") == {"epochs": 3, "lr": 0.001}
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.yaml"]


def test_atomic_directory_swaps_in_or_leaves_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "config.yaml").write_text("v: 1\n")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "w.bin").write_bytes(b"1")
    assert (target / "config.yaml").read_text() == "v: 1\n"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "config.yaml").write_text("v: 2\n")
            raise RuntimeError("boom")
    assert (target / "config.yaml").read_text() == "v: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or .old left
    with atomic_directory(target) as tmp:
        (tmp / "config.yaml").write_text("v: 3\n")
    assert sorted(p.name for p in target.iterdir()) == ["config.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_old_import_paths_are_the_same_functions() -> None:
    from vlseg.data import io

    assert io.atomic_write is atomic.atomic_write
    assert io.atomic_directory is atomic.atomic_directory
    assert io.write_json is atomic.write_json


def test_scratch_writes_skip_fsync_but_stay_atomic(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: calls.append(fd))
    target = tmp_path / "turn" / "overlay.png"
    with atomic_write(target, durable=False) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and calls == []
    with pytest.raises(RuntimeError), atomic_write(target, durable=False) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new"  # untouched, and no temporary file left behind
    assert sorted(p.name for p in target.parent.iterdir()) == ["overlay.png"]
    with atomic_write(target) as tmp:  # the default stays durable: file and folder
        tmp.write_bytes(b"kept")
    assert len(calls) == 2


def test_chat_session_files_are_scratch_writes(tmp_path: Path, monkeypatch) -> None:
    from vlseg.chat import render

    calls = []
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: calls.append(fd))
    render.write_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "o.png")
    render.write_mask_files([np.ones((4, 4), bool)], ["the liver"], tmp_path)
    assert calls == [] and (tmp_path / "mask-01-the-liver.png").is_file()


def test_atomic_directory_has_the_usual_permissions(tmp_path: Path) -> None:
    """mkdtemp makes 0700 folders: a published checkpoint must be as readable as a folder made
    with mkdir (others could not load shared runs)."""
    umask = os.umask(0o022)
    os.umask(umask)
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        f = tmp / "sub" / "model.safetensors"
        f.write_bytes(b"x")
        os.chmod(f, 0o600)
    assert (target.stat().st_mode & 0o777) == 0o777 & ~umask
    assert ((target / "sub").stat().st_mode & 0o777) == 0o777 & ~umask
    assert ((target / "sub" / "model.safetensors").stat().st_mode & 0o777) == 0o666 & ~umask
