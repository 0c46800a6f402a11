"""Tests for vlseg.data.manifest: JSONL and medvlsm layouts, validation, the torch dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vlseg.data.manifest import (
    ManifestDataset,
    Record,
    collate,
    find_problems,
    read_manifest,
    validate_records,
    write_manifest,
)

H, W = 40, 56
BOX = (10, 26, 8, 30)  # y0, y1, x0, x1 of the bright square (and of its mask)


def write_pair(root: Path, name: str, *, mask_values: tuple[int, int] = (0, 255)) -> None:
    """images/<name>.png with a bright square, masks/<name>.png with that square."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    y0, y1, x0, x1 = BOX
    img = np.full((H, W), 25, np.uint8)
    img[y0:y1, x0:x1] = 220
    Image.fromarray(img).save(root / "images" / f"{name}.png")
    mask = np.full((H, W), mask_values[0], np.uint8)
    mask[y0:y1, x0:x1] = mask_values[1]
    Image.fromarray(mask).save(root / "masks" / f"{name}.png")


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture()
def jsonl_dir(tmp_path: Path) -> Path:
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b", mask_values=(0, 1))
    rows = [
        {
            "id": "a-lesion",
            "image": "images/a.png",
            "mask": "masks/a.png",
            "text": "the bright lesion",
            "label": "lesion",
            "modality": "ct",
            "spacing": [0.5, 0.6],
            "split": "train",
            "source_study": 17,
        },
        {"image": "images/a.png", "mask": None, "text": "the renal cyst", "split": "train"},
        {
            "id": "b",
            "image": str(tmp_path / "images" / "b.png"),  # absolute paths are allowed
            "mask": "masks/b.png",
            "prompts": ["the square", "the bright square"],
            "split": "val",
            "caption": "a phantom",
            "target": "square",
        },
    ]
    write_jsonl(tmp_path / "manifest.jsonl", rows)
    return tmp_path


@pytest.fixture()
def medvlsm_dir(tmp_path: Path) -> Path:
    root = tmp_path / "kvasir_polyp"
    for name in ("x1", "x2", "x3"):
        write_pair(root, name)
    rec = {
        "bbox": [8, 10, 30, 26],
        "cat": 0,
        "segment_id": "x1",
        "img_name": "x1.png",
        "mask_name": "x1.png",
        "sentences": [{"idx": 0, "sent_id": 1, "sent": ""}],
        "sentences_num": 1,
        "prompts": {"p0": "", "p1": "polyp", "p2": ["pink polyp", "round polyp"]},
    }
    (root / "anns").mkdir()
    train = [rec, {**rec, "segment_id": "x2", "img_name": "x2.png", "mask_name": "x2.png"}]
    val = [{"img_name": "x3.png", "mask_name": "x3.png", "prompts": {"p0": "", "p1": "a polyp"}}]
    (root / "anns" / "train.json").write_text(json.dumps(train))
    (root / "anns" / "val.json").write_text(json.dumps(val))
    return root


# --------------------------------------------------------------------------------------------
# reading


def test_read_jsonl_fields(jsonl_dir: Path) -> None:
    recs = read_manifest(jsonl_dir / "manifest.jsonl")
    assert [r.id for r in recs] == ["a-lesion", "a", "b"]  # id defaults to the image stem
    a, neg, b = recs
    assert a.image == jsonl_dir / "images" / "a.png" and a.mask == jsonl_dir / "masks" / "a.png"
    assert a.prompts == ["the bright lesion"] and a.text == "the bright lesion"
    assert (a.label, a.modality, a.spacing, a.split) == ("lesion", "ct", (0.5, 0.6), "train")
    assert a.positive and a.extra == {"source_study": 17}
    assert neg.mask is None and neg.positive is False and neg.label == ""
    assert b.prompts == ["the square", "the bright square"] and b.prompt_keys == ["0", "1"]
    assert (b.caption, b.target) == ("a phantom", "square")
    assert "manifest.jsonl line 3" in b.where()
    # a directory holding manifest.jsonl reads the same
    assert [r.id for r in read_manifest(jsonl_dir)] == ["a-lesion", "a", "b"]


def test_read_jsonl_split_filter(jsonl_dir: Path) -> None:
    assert [r.id for r in read_manifest(jsonl_dir, split="train")] == ["a-lesion", "a"]
    assert [r.id for r in read_manifest(jsonl_dir, split="val")] == ["b"]
    with pytest.raises(ValueError, match=r"no records with split 'test'.*\['train', 'val'\]"):
        read_manifest(jsonl_dir, split="test")


def test_read_jsonl_lists_every_malformed_line(tmp_path: Path) -> None:
    rows = [
        {"image": "a.png", "text": "ok"},
        "{not json",
        {"mask": "m.png", "text": "no image"},
        {"image": "a.png", "text": "x", "spacing": [0.5]},
        {"image": "a.png", "text": "x", "masks": "typo.png"},
        ["not", "an", "object"],
        {"image": "a.png", "prompts": "a string", "positive": "yes"},
    ]
    with pytest.raises(ValueError) as info:
        read_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    msg = str(info.value)
    assert "7 problems" in msg
    for expected in (
        "line 2: invalid JSON",
        "line 3: 'image' must be a non-empty path",
        "line 4: 'spacing' must be [row_mm, col_mm]",
        "line 5: unknown key 'masks' (did you mean 'mask'?)",
        "line 6: expected a JSON object",
        "line 7: 'prompts' must be a list or an object",
        "line 7: 'positive' must be true or false",
    ):
        assert expected in msg


def test_read_manifest_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="neither manifest.jsonl nor a medvlsm anns/"):
        read_manifest(tmp_path)
    (tmp_path / "m.csv").write_text("image,text\n")
    with pytest.raises(ValueError, match="expected a .jsonl manifest"):
        read_manifest(tmp_path / "m.csv")


def test_read_medvlsm_layout(medvlsm_dir: Path) -> None:
    recs = read_manifest(medvlsm_dir)
    assert [(r.id, r.split) for r in recs] == [("x1", "train"), ("x2", "train"), ("x3", "val")]
    x1 = recs[0]
    assert x1.image == medvlsm_dir / "images" / "x1.png"
    assert x1.mask == medvlsm_dir / "masks" / "x1.png" and x1.positive
    # p0 (empty) is dropped; list values expand, keeping their key
    assert x1.prompts == ["polyp", "pink polyp", "round polyp"]
    assert x1.prompt_keys == ["p1", "p2", "p2"]
    assert x1.extra["bbox"] == [8, 10, 30, 26] and x1.extra["segment_id"] == "x1"
    assert x1.format == "medvlsm" and "anns/train.json item 0" in x1.where()
    assert recs[2].id == "x3"  # no segment_id: the image stem
    assert [r.id for r in read_manifest(medvlsm_dir, split="val")] == ["x3"]
    assert [r.id for r in read_manifest(medvlsm_dir / "anns" / "train.json")] == ["x1", "x2"]
    with pytest.raises(ValueError, match=r"no test\.json; available splits: \['train', 'val'\]"):
        read_manifest(medvlsm_dir, split="test")
    validate_records(recs)  # a clean medvlsm dataset passes


def test_medvlsm_negative_without_mask_name(medvlsm_dir: Path) -> None:
    rows = [{"img_name": "x1.png", "mask_name": None, "prompts": {"p1": "no polyp here"}}]
    (medvlsm_dir / "anns" / "test.json").write_text(json.dumps(rows))
    (rec,) = read_manifest(medvlsm_dir, split="test")
    assert rec.mask is None and rec.positive is False and rec.split == "test"


def test_write_manifest_round_trip(jsonl_dir: Path, medvlsm_dir: Path) -> None:
    recs = read_manifest(jsonl_dir) + read_manifest(medvlsm_dir)
    out = write_manifest(recs, jsonl_dir / "copy" / "manifest.jsonl")
    first = json.loads(out.read_text().splitlines()[0])
    assert first["image"] == str((jsonl_dir / "images" / "a.png").resolve())  # outside: absolute
    back = read_manifest(out)
    for r, s in zip(recs, back, strict=True):
        assert (s.id, s.image.resolve(), s.prompts, s.prompt_keys) == (
            r.id,
            r.image.resolve(),
            r.prompts,
            r.prompt_keys,
        )
        assert (s.mask and s.mask.resolve()) == (r.mask and r.mask.resolve())
        assert (s.positive, s.split, s.spacing, s.label, s.extra) == (
            r.positive,
            r.split,
            r.spacing,
            r.label,
            r.extra,
        )


# --------------------------------------------------------------------------------------------
# validation


def test_validation_lists_every_bad_record(jsonl_dir: Path) -> None:
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(jsonl_dir / "masks" / "small.png")
    labels = np.zeros((H, W), np.uint8)
    labels[:5, :5], labels[5:9, :5] = 1, 2
    Image.fromarray(labels).save(jsonl_dir / "masks" / "labels.png")
    (jsonl_dir / "images" / "junk.png").write_bytes(b"junk")
    rows = [
        {"id": "ok", "image": "images/a.png", "mask": "masks/a.png", "text": "fine"},
        {"id": "no-image", "image": "images/zzz.png", "mask": "masks/a.png", "text": "t"},
        {"id": "no-mask", "image": "images/a.png", "mask": "masks/zzz.png", "text": "t"},
        {"id": "size", "image": "images/a.png", "mask": "masks/small.png", "text": "t"},
        {"id": "labels", "image": "images/a.png", "mask": "masks/labels.png", "text": "t"},
        {"id": "empty-text", "image": "images/a.png", "mask": "masks/a.png", "text": "  "},
        {"id": "no-text", "image": "images/a.png", "mask": "masks/a.png"},
        {
            "id": "split",
            "image": "images/a.png",
            "mask": "masks/a.png",
            "text": "t",
            "split": "trian",
        },
        {"id": "pos", "image": "images/a.png", "mask": None, "text": "t", "positive": True},
        {
            "id": "neg",
            "image": "images/a.png",
            "mask": "masks/a.png",
            "text": "t",
            "positive": False,
        },
        {"id": "junk", "image": "images/junk.png", "mask": None, "text": "t"},
    ]
    recs = read_manifest(write_jsonl(jsonl_dir / "bad.jsonl", rows))
    with pytest.raises(ValueError) as info:
        validate_records(recs)
    msg = str(info.value)
    assert "10 problems" in msg and "11 records" in msg
    expected = {
        "no-image": "image file not found",
        "no-mask": "mask file not found",
        "size": "mask size 41x56 (HxW) differs from image size 40x56",
        "labels": "is not a binary mask: found values 0, 1, 2",
        "empty-text": "prompt 0 is empty",
        "no-text": "no text or prompts",
        "split": "unknown split 'trian'",
        "pos": "positive record without a mask",
        "neg": "positive is false but the mask has 352 foreground pixels",
        "junk": "is not a readable image",
    }
    lines = msg.splitlines()[1:]
    assert len(lines) == len(expected)
    for rid, problem in expected.items():
        assert any(f"(id {rid!r}): " in line and problem in line for line in lines), rid
    assert "'ok'" not in msg
    # without file checks only the content problems remain
    assert len(find_problems(recs, check_files=False)) == 4


def test_validation_message_is_capped(tmp_path: Path) -> None:
    recs = [Record(id=f"r{i}", image=tmp_path / "x.png", mask=None, prompts=[]) for i in range(30)]
    with pytest.raises(ValueError, match=r"60 problems") as info:
        validate_records(recs, check_files=False)
    msg = str(info.value)
    assert msg.count("\n  - ") == 20 and "... and 40 more" in msg


# --------------------------------------------------------------------------------------------
# dataset


def test_dataset_items(jsonl_dir: Path) -> None:
    ds = ManifestDataset(jsonl_dir, image_size=(32, 48), prompt="first")
    assert len(ds) == 3
    item = ds[0]
    assert item["image"].shape == (3, 32, 48) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 48) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["positive"].dtype == torch.float32 and item["positive"].shape == ()
    assert float(item["positive"]) == 1.0
    assert (item["text"], item["label"], item["modality"]) == ("the bright lesion", "lesion", "ct")
    assert item["orig_size"] == (H, W) and item["spacing"] == (0.5, 0.6) and item["index"] == 0
    neg = ds[1]
    assert float(neg["positive"]) == 0.0 and not neg["mask"].any()
    assert neg["label"] == "" and neg["spacing"] is None
    assert ds[2]["text"] == "the square"  # prompt="first"


@pytest.mark.parametrize("augment", [False, True])
def test_dataset_mask_stays_on_the_bright_square(jsonl_dir: Path, augment: bool) -> None:
    ds = ManifestDataset(
        jsonl_dir, image_size=(33, 47), augment=augment, mean=(0, 0, 0), std=(1, 1, 1)
    )
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in (0, 2):
            item = ds[i]
            bright = item["image"].mean(0) > 0.5
            mask = item["mask"][0].bool()
            iou = float((bright & mask).sum()) / float((bright | mask).sum())
            assert iou > 0.85, (epoch, i, iou)


def test_prompt_modes(jsonl_dir: Path, medvlsm_dir: Path) -> None:
    assert len(ManifestDataset(jsonl_dir, image_size=16, prompt="all")) == 4
    texts = [
        it["text"] for it in ManifestDataset(jsonl_dir, image_size=16, prompt="all", validate=False)
    ]
    assert texts == ["the bright lesion", "the renal cyst", "the square", "the bright square"]
    assert (
        ManifestDataset(jsonl_dir, "val", image_size=16, prompt=1)[0]["text"] == "the bright square"
    )
    with pytest.raises(ValueError, match=r"prompt=1 selects no expression in 2 record"):
        ManifestDataset(jsonl_dir, prompt=1)
    ds = ManifestDataset(medvlsm_dir, split="train", image_size=16, prompt="p2")
    assert {ds[0]["text"], ds[1]["text"]} <= {"pink polyp", "round polyp"}
    with pytest.raises(ValueError, match=r"'p1', 'p2'"):
        ManifestDataset(medvlsm_dir, prompt="p9")


def test_random_prompt_is_reproducible(medvlsm_dir: Path) -> None:
    def texts(seed: int, epoch: int) -> list[str]:
        ds = ManifestDataset(medvlsm_dir, "train", image_size=16, seed=seed, validate=False)
        ds.set_epoch(epoch)
        return [ds[i % 2]["text"] for i in range(2)] + [ds[0]["text"] for _ in range(3)]

    assert texts(0, 0) == texts(0, 0)
    runs = {tuple(texts(0, e)) for e in range(8)}
    assert len(runs) > 1  # the epoch changes the choice
    ds = ManifestDataset(medvlsm_dir, split="train", image_size=16, validate=False)
    seen = set()
    for epoch in range(20):
        ds.set_epoch(epoch)
        seen.add(ds[0]["text"])
    assert seen == {"polyp", "pink polyp", "round polyp"}  # never the empty p0


def test_dataset_validates_and_collates(jsonl_dir: Path) -> None:
    rows = [{"image": "images/a.png", "mask": "masks/missing.png", "text": "t"}]
    write_jsonl(jsonl_dir / "bad.jsonl", rows)
    with pytest.raises(ValueError, match="mask file not found"):
        ManifestDataset(jsonl_dir / "bad.jsonl")
    ds = ManifestDataset(jsonl_dir, image_size=32, prompt="all")
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
    assert batch["positive"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert batch["text"][1] == "the renal cyst" and batch["orig_size"][0] == (H, W)
    assert batch["spacing"] == [(0.5, 0.6), None, None, None] and batch["index"] == [0, 1, 2, 3]
    with pytest.raises(IndexError):
        ds[4]
    records = read_manifest(jsonl_dir)
    assert len(ManifestDataset(records, split="train")) == 2  # records work as a source too


def test_set_epoch_reaches_persistent_workers(medvlsm_dir: Path) -> None:
    ds = ManifestDataset(medvlsm_dir, split="train", image_size=16, validate=False)
    expected = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        expected.append([ds[i]["text"] for i in range(len(ds))])
    assert len({tuple(e) for e in expected}) > 1
    loader = DataLoader(
        ds, batch_size=2, collate_fn=collate, num_workers=1, persistent_workers=True
    )
    for epoch in range(4):
        ds.set_epoch(epoch)
        assert next(iter(loader))["text"] == expected[epoch], epoch
    assert ds.record_for(1).id == "x2" and ds.epoch == 3
