"""The held-out phantom family: deterministic, truthful annotations, a separate renderer."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
from scipy import ndimage

from vlseg.data import heldout_family as hf
from vlseg.data.heldout_family import generate_family_sample, write_family_dataset
from vlseg.data.manifest import ManifestDataset, read_manifest
from vlseg.data.phantoms import DERM_CLASSES, generate_sample

SIZE = 128
N_CT = 12


@pytest.fixture(scope="module")
def ct_samples():
    return [generate_family_sample(seed=3, index=i, modality="ct", size=SIZE) for i in range(N_CT)]


@pytest.fixture(scope="module")
def derm_samples():
    return [
        generate_family_sample(seed=3, index=i, modality="dermoscopy", size=SIZE) for i in range(10)
    ]


@pytest.mark.parametrize("modality", ["ct", "dermoscopy"])
def test_deterministic_per_seed(modality):
    a = generate_family_sample(seed=5, index=2, modality=modality, size=SIZE)
    b = generate_family_sample(seed=5, index=2, modality=modality, size=SIZE)
    c = generate_family_sample(seed=6, index=2, modality=modality, size=SIZE)
    assert np.array_equal(a.image, b.image)
    assert [(t.key, t.objects, t.prompts) for t in a.targets] == [
        (t.key, t.objects, t.prompts) for t in b.targets
    ]
    assert all(np.array_equal(o.mask, p.mask) for o, p in zip(a.objects, b.objects, strict=True))
    assert a.caption == b.caption and a.split == b.split
    assert not np.array_equal(a.image, c.image)


def test_bad_arguments():
    with pytest.raises(ValueError, match="modality"):
        generate_family_sample(seed=0, index=0, modality="mri")
    with pytest.raises(ValueError, match="too small"):
        generate_family_sample(seed=0, index=0, modality="ct", size=32)


def test_splits_are_val_or_test():
    splits = {hf.family_split(0, i) for i in range(200)}
    assert splits == {"val", "test"}


def _consistent(sample):
    names = {o.name for o in sample.objects}
    for o in sample.objects:
        assert o.mask.shape == sample.image.shape[:2] and o.mask.dtype == bool
        assert o.mask.sum() > 0, f"{sample.id}: {o.name} is empty"
    for t in sample.targets:
        assert set(t.objects) <= names
        assert t.prompts and all(isinstance(p, str) and p for p in t.prompts)
        m = sample.mask(t)
        assert m.any() == t.positive


def test_ct_objects_and_targets(ct_samples):
    for s in ct_samples:
        assert s.image.shape == (SIZE, SIZE) and s.image.dtype == np.uint8
        assert s.modality == "ct" and s.id.startswith("hf_ct_")
        _consistent(s)
        by = {o.name: o for o in s.objects}
        for name in ("liver", "spleen", "kidney_right", "kidney_left", "spine", "aorta"):
            assert name in by
        # Organ masks do not overlap each other.
        organs = [by[n].mask for n in ("liver", "spleen", "kidney_right", "kidney_left", "aorta")]
        assert (np.sum(organs, 0) <= 1).all()
        lesions = [o for o in s.objects if o.category == "hepatic_lesion"]
        assert s.label == ("hepatic lesion" if lesions else "normal liver")
        for o in lesions:
            assert not (o.mask & ~by["liver"].mask).any()
            assert o.attrs["area"] == int(o.mask.sum())
        if "renal_cyst" in by:
            side = by["renal_cyst"].attrs["side"]
            assert not (by["renal_cyst"].mask & ~by[f"kidney_{side}"].mask).any()
    assert sum(o.category == "hepatic_lesion" for s in ct_samples for o in s.objects) >= 4


def _cx(mask):
    return float(np.argwhere(mask)[:, 1].mean())


def test_ct_sides_follow_the_radiological_convention(ct_samples):
    half = SIZE / 2
    for s in ct_samples:
        assert _cx(s.object("kidney_left").mask) > half  # patient's left on the image right
        assert _cx(s.object("kidney_right").mask) < half
        assert _cx(s.object("spleen").mask) > half
        assert _cx(s.object("liver").mask) < half
        if any(o.name == "renal_cyst" for o in s.objects):
            cyst = s.object("renal_cyst")
            assert (_cx(cyst.mask) > half) == (cyst.attrs["side"] == "left")


def test_ct_lobe_density_and_size_words_are_true(ct_samples):
    checked = {"hypo": 0, "hyper": 0}
    for s in ct_samples:
        liver = s.object("liver").mask
        lesions = [o for o in s.objects if o.category == "hepatic_lesion"]
        all_lesions = np.any([o.mask for o in lesions], 0) if lesions else np.zeros_like(liver)
        lx, ly, slant = s.attrs["lobe_line"]
        c = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
        yy, xx = np.meshgrid(c, c, indexing="ij")
        side = (xx - lx) - slant * (yy - ly)
        for o in lesions:
            # Lobe: the whole lesion lies on its lobe's side of the lobe line.
            on_left = side[o.mask] > 0
            assert on_left.all() if o.attrs["lobe"] == "left" else (~on_left).all()
            # Density: darker / brighter than the surrounding liver in the displayed image.
            ring = ndimage.binary_dilation(o.mask, iterations=4) & liver & ~all_lesions
            inside = ndimage.binary_erosion(o.mask) if o.mask.sum() > 30 else o.mask
            diff = s.image[inside].mean() - s.image[ring].mean()
            assert diff < -5 if o.attrs["density"] == "hypo" else diff > 5, (s.id, o.name, diff)
            checked[o.attrs["density"]] += 1
            # Size: equivalent radius within the class's band (normalised units).
            r = np.sqrt(o.mask.sum() / np.pi) / (SIZE / 2)
            if o.attrs["size"] == "large":
                assert r > hf.LARGE_LESION_MIN_R * 0.85
            else:
                assert r < hf.SMALL_LESION_MAX_R * 1.15
            # The training generator's reserved combination never appears here.
            assert (o.attrs["density"], o.attrs["lobe"]) != ("hyper", "left")
        if lesions:
            assert s.caption.startswith("abdominal CT slice with")
    assert checked["hypo"] >= 1


def test_dermoscopy_objects_and_language(derm_samples):
    seen = set()
    for s in derm_samples:
        assert s.image.shape == (SIZE, SIZE, 3) and s.image.dtype == np.uint8
        _consistent(s)
        lesion = s.object("skin_lesion")
        assert lesion.attrs["class"] in DERM_CLASSES and s.label == lesion.attrs["class"]
        assert s.attrs["skin_tone"] in ("light", "medium", "dark")
        assert s.caption.startswith("dermoscopy image of ") and s.label in s.caption
        if any(o.name == "ink" for o in s.objects):
            assert not (s.object("ink").mask & lesion.mask).any()
        # The lesion is visibly different from the surrounding skin.
        ring = ndimage.binary_dilation(lesion.mask, iterations=6) & ~ndimage.binary_dilation(
            lesion.mask, iterations=2
        )
        gap = np.abs(s.image[lesion.mask].mean(0) - s.image[ring].mean(0)).max()
        assert gap > 8, (s.id, gap)
        seen.add(lesion.attrs["class"])
    assert len(seen) >= 3


def test_family_is_a_separate_renderer():
    src = inspect.getsource(hf)
    tree = ast.parse(src)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not imported & {"render_ct", "render_dermoscopy", "random_blob", "blob"}
    assert "render_ct" not in src and "render_dermoscopy" not in src
    for modality in ("ct", "dermoscopy"):
        fam = generate_family_sample(seed=0, index=0, modality=modality, size=SIZE)
        train = generate_sample(seed=0, index=0, modality=modality, size=SIZE)
        assert fam.image.shape == train.image.shape
        assert not np.array_equal(fam.image, train.image)
        hist_f = np.bincount(fam.image.ravel(), minlength=256) / fam.image.size
        hist_t = np.bincount(train.image.ravel(), minlength=256) / train.image.size
        assert np.abs(hist_f - hist_t).sum() > 0.2  # different grey-level/colour statistics


def test_written_dataset_is_readable(tmp_path):
    out = write_family_dataset(tmp_path / "fam", 6, seed=1, size=64, progress=False)
    records = read_manifest(out)
    assert {r.split for r in records} <= {"val", "test"}
    assert {r.modality for r in records} == {"ct", "dermoscopy"}
    assert any(r.mask for r in records) and any(not r.mask for r in records)
    assert (out / "dataset.json").exists()
    test_records = read_manifest(out, "test")
    ds = ManifestDataset(out, "test", image_size=32, prompt="first")
    assert len(ds) == len(test_records)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)
    with pytest.raises(FileExistsError):
        write_family_dataset(out, 1, seed=1, size=64, progress=False)
