"""Phantom generator: determinism, mask/expression consistency, held-out separation."""

import hashlib
import json

import numpy as np
import pytest

from vlseg.cli import main as cli_main
from vlseg.data.phantoms import (
    DERM_CLASSES,
    generate_sample,
    iter_samples,
    split_of,
    write_dataset,
)
from vlseg.data.phantoms import language as lang
from vlseg.data.phantoms.sheet import contact_sheet


def _digest(sample):
    h = hashlib.sha256(sample.image.tobytes())
    for t in sample.targets:
        h.update(t.key.encode())
        h.update("|".join(t.prompts).encode())
        h.update(np.packbits(sample.mask(t)).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("modality", ["ct", "dermoscopy"])
def test_same_seed_same_sample_and_different_seed_differs(modality):
    a = generate_sample(seed=3, index=5, modality=modality, size=96)
    b = generate_sample(seed=3, index=5, modality=modality, size=96)
    c = generate_sample(seed=4, index=5, modality=modality, size=96)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_image_types_and_shapes():
    ct = generate_sample(seed=0, index=0, modality="ct", size=128)
    derm = generate_sample(seed=0, index=1, modality="dermoscopy", size=128)
    assert ct.image.shape == (128, 128) and ct.image.dtype == np.uint8
    assert derm.image.shape == (128, 128, 3) and derm.image.dtype == np.uint8
    # A windowed CT slice spans dark air to bright bone; skin is neither black nor flat.
    assert ct.image.min() < 20 and ct.image.max() > 235
    assert derm.image.std() > 5


def test_positive_targets_have_masks_and_negatives_are_empty():
    for s in iter_samples(16, seed=11, size=96, n_heldout=4):
        for t in s.targets:
            area = int(s.mask(t).sum())
            assert t.prompts and all(p.strip() for p in t.prompts), (s.id, t.key)
            if t.positive:
                assert area > 0, (s.id, t.key)
            else:
                assert area == 0, (s.id, t.key)


def test_ct_anatomy_is_consistent():
    for i in range(6):
        s = generate_sample(seed=1, index=i, modality="ct", size=128)
        liver = s.object("liver").mask
        for o in s.objects:
            if o.category == "hepatic_lesion":
                assert not (o.mask & ~liver).any(), "lesions lie inside the liver"
        # Radiological convention: the patient's right kidney is on the image left.
        cols = np.arange(128)
        right = (s.object("kidney_right").mask.sum(0) * cols).sum() / s.object(
            "kidney_right"
        ).mask.sum()
        left = (s.object("kidney_left").mask.sum(0) * cols).sum() / s.object(
            "kidney_left"
        ).mask.sum()
        assert right < 64 < left
        # "both kidneys" is the union of the two.
        both = s.mask("kidneys")
        assert (
            both.sum() == s.object("kidney_right").mask.sum() + s.object("kidney_left").mask.sum()
        )


def test_largest_lesion_expression_points_at_largest():
    found = 0
    for i in range(40):
        s = generate_sample(seed=2, index=i, modality="ct", size=96)
        lesions = [o for o in s.objects if o.category == "hepatic_lesion"]
        if len(lesions) > 1:
            biggest = max(lesions, key=lambda o: o.mask.sum())
            assert np.array_equal(s.mask("lesion_largest"), biggest.mask)
            found += 1
    assert found > 3


def test_heldout_split_is_separated_from_train():
    train_prompts, train_combos, train_keys = set(), set(), set()
    for s in iter_samples(60, seed=5, size=64):
        assert s.split in {"train", "val", "test"}
        train_prompts.update(p for t in s.targets for p in t.prompts)
        train_combos.update(_combos(s))
        train_keys.update(t.key for t in s.targets)
    held_prompts, held_combos = set(), set()
    for s in iter_samples(0, seed=5, size=64, n_heldout=20):
        assert s.split == "test_heldout"
        held_prompts.update(p for t in s.targets for p in t.prompts)
        held_combos.update(_combos(s))
    assert not (train_prompts & held_prompts), "held-out phrasings never occur in train"
    assert ("ct", "hyper", "left") in held_combos
    assert ("ct", "hyper", "left") not in train_combos
    # the reserved combination is not even worded in train, as a negative ("never there")
    assert "lesions_hypodense_left_lobe" in train_keys
    assert "lesions_hyperdense_left_lobe" not in train_keys
    assert not {("derm", "basal cell carcinoma", "dark"), ("derm", "dermatofibroma", "light")} & (
        train_combos
    )


def _combos(s):
    if s.modality == "ct":
        return {
            ("ct", o.attrs["density"], o.attrs["lobe"])
            for o in s.objects
            if o.category == "hepatic_lesion"
        }
    return {("derm", s.attrs["class"], s.attrs["skin_tone"])}


def test_all_dermoscopy_classes_occur():
    seen = {
        generate_sample(seed=0, index=i, modality="dermoscopy", size=64).label for i in range(40)
    }
    assert seen == set(DERM_CLASSES)


def test_split_fractions_roughly_80_10_10():
    splits = [split_of(0, i) for i in range(2000)]
    assert 0.76 < splits.count("train") / 2000 < 0.84
    assert 0.07 < splits.count("val") / 2000 < 0.13


def test_lesion_phrases_grammar():
    one = lang.lesion_phrases(count=1, heldout=False, density="hypo", lobe="right")
    assert "the dark lesion in the right lobe" in one
    many = lang.lesion_phrases(count=2, heldout=False)
    assert "all hepatic lesions" in many and "the liver lesions" in many


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown modality 'mri'.*ct, dermoscopy"):
        generate_sample(seed=0, index=0, modality="mri")
    with pytest.raises(ValueError, match="too small"):
        generate_sample(seed=0, index=0, modality="ct", size=16)


def test_write_dataset_is_byte_identical_and_consistent(tmp_path):
    a = write_dataset(tmp_path / "a", 10, seed=7, size=64, progress=False)
    b = write_dataset(tmp_path / "b", 10, seed=7, size=64, progress=False, workers=2)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    records = [json.loads(line) for line in (a / "manifest.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} >= {"train", "test_heldout"}
    for r in records:
        assert (a / r["image"]).is_file()
        assert (r["mask"] is None) == (not r["positive"])
        if r["mask"]:
            from PIL import Image

            m = np.asarray(Image.open(a / r["mask"]))
            assert set(np.unique(m)) <= {0, 255} and m.any()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_dataset(a, 2, seed=7, size=64, progress=False)


def test_cli_writes_dataset_and_sheet(tmp_path, capsys):
    rc = cli_main(
        [
            "phantoms",
            "--out",
            str(tmp_path / "d"),
            "--n",
            "4",
            "--seed",
            "1",
            "--size",
            "64",
            "--preview",
            str(tmp_path / "sheet.png"),
            "--preview-count",
            "4",
            "--quiet",
        ]
    )
    assert rc == 0
    assert (tmp_path / "d" / "manifest.jsonl").is_file()
    assert (tmp_path / "sheet.png").stat().st_size > 1000
    assert cli_main(["phantoms", "--out", str(tmp_path / "d"), "--n", "1", "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err


def test_contact_sheet_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([], tmp_path / "x.png")
