"""vlseg mix: one manifest from several datasets."""

import json

import pytest

from vlseg.cli import main
from vlseg.data.manifest import read_manifest
from vlseg.data.manifest.mix import mix_manifests, parse_source


def _dataset(root, n, splits=("train", "val", "test")):
    root.mkdir(parents=True)
    (root / "images").mkdir()
    with open(root / "manifest.jsonl", "w") as f:
        for i in range(n):
            (root / "images" / f"{i}.png").write_bytes(b"")
            rec = {
                "id": f"s{i}",
                "image": f"images/{i}.png",
                "mask": None,
                "prompts": ["the liver"],
                "positive": False,
                "split": splits[i % len(splits)],
            }
            f.write(json.dumps(rec) + "\n")
    return root


def test_parse_source():
    assert parse_source("data/a") == (parse_source("data/a:1")[0], 1.0)
    assert parse_source("data/a:0.25")[1] == 0.25
    assert parse_source("c:/odd:name")[1] == 1.0  # a colon that is part of the path
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        parse_source("data/a:1.5")


def test_mix_takes_splits_absolute_paths_and_fractions(tmp_path, capsys):
    a = _dataset(tmp_path / "a", 30)
    b = _dataset(tmp_path / "b", 300)
    path, counts = mix_manifests(tmp_path / "mix", [str(a), f"{b}:0.5"], seed=1)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert counts[str(a)] == 20  # train + val of 30
    assert 150 < counts[str(b)] * 2 < 250 and len(recs) == 20 + counts[str(b)]
    assert {r["split"] for r in recs} == {"train", "val"}
    assert all(r["id"].split("/")[0] in ("a", "b") for r in recs)
    again, _ = mix_manifests(tmp_path / "mix2", [str(a), f"{b}:0.5"], seed=1)
    assert again.read_text() == path.read_text()  # same seed, same records
    # the mix reads as a manifest whose images exist where the sources keep them
    assert all(r.image.is_file() for r in read_manifest(tmp_path / "mix", "train"))
    assert main(["mix", "--out", str(tmp_path / "m3"), str(a), "--splits", "test"]) == 0
    assert "10 records" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="JSONL"):
        mix_manifests(tmp_path / "m4", [str(tmp_path / "nope")])
    with pytest.raises(ValueError, match="no records"):
        mix_manifests(tmp_path / "m5", [str(a)], splits=("test_heldout",))


def test_sources_with_the_same_folder_name_keep_ids_unique(tmp_path):
    a = _dataset(tmp_path / "one" / "ph", 12)
    b = _dataset(tmp_path / "two" / "ph", 12)
    path, _ = mix_manifests(tmp_path / "mix", [str(a), str(b)])
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 16
    assert {i.split("/")[0] for i in ids} == {"ph", "ph-2"}
    with pytest.raises(ValueError, match="given twice"):
        mix_manifests(tmp_path / "mix2", [str(a), f"{a}:0.5"])
