"""load_record_target: a record's ground truth at the original resolution and at its slice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlseg.data import load_record_target
from vlseg.data.io import load_image, load_mask
from vlseg.data.manifest import ManifestDataset, Record, read_manifest

X, Y, Z = 6, 5, 3  # voxel grid; a slice shows Y rows by X columns


def write_volume_pair(root: Path) -> tuple[Path, Path]:
    """A CT volume and a label volume whose lesion sits in a different place on every slice."""
    import nibabel as nib

    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    ct = np.full((X, Y, Z), 40, np.int16)
    ct[:, 0, :] = -1000  # an air row so it reads as CT
    labels = np.zeros((X, Y, Z), np.uint8)
    labels[0:2, 1:3, 0] = 1  # slice 0: 4 voxels
    labels[3:6, 2:4, 1] = 1  # slice 1 (the middle one): 6 voxels
    ct[labels > 0] = 120  # the lesion is visible in the image too
    nib.save(nib.Nifti1Image(ct, affine), root / "ct.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), root / "seg.nii.gz")
    return root / "ct.nii.gz", root / "seg.nii.gz"


def test_target_is_the_records_slice_not_the_middle_one(tmp_path: Path) -> None:
    image, mask = write_volume_pair(tmp_path)
    rows = [
        {"image": "ct.nii.gz", "mask": "seg.nii.gz", "text": "the lesion", "slice": 0},
        {"image": "ct.nii.gz", "mask": "seg.nii.gz", "text": "the lesion"},  # middle slice
        {"image": "ct.nii.gz", "mask": None, "text": "the renal cyst", "slice": 2},
    ]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    at_slice, middle, negative = read_manifest(tmp_path)

    target = load_record_target(at_slice)
    assert target.dtype == bool and target.shape == (Y, X)
    np.testing.assert_array_equal(target, load_mask(mask, slice_index=0))
    assert target.sum() == 4  # slice 0's lesion, not the middle slice's 6 voxels
    assert load_record_target(middle).sum() == 6
    assert not load_record_target(negative).any()
    assert load_record_target(negative).shape == (Y, X)
    np.testing.assert_array_equal(load_record_target(at_slice, size=(Y, X)), target)


def test_dataset_reads_image_and_mask_at_the_same_slice(tmp_path: Path) -> None:
    image, _ = write_volume_pair(tmp_path)
    rec = Record(id="s0", image=image, mask=tmp_path / "seg.nii.gz", prompts=["x"], slice_index=0)
    ds = ManifestDataset([rec], image_size=(Y, X), prompt="first")  # no resize: exact pixels
    item = ds[0]
    target = load_record_target(rec)
    assert item["orig_size"] == target.shape
    np.testing.assert_array_equal(item["mask"][0].numpy() > 0.5, target)
    # the lesion's pixels are the bright ones of the same slice of the image
    bright = load_image(image, slice_index=0).rgb[:, :, 0] > 150  # 120 HU vs 40 HU: 179 vs 128
    np.testing.assert_array_equal(bright, target)
    assert isinstance(item["image"], torch.Tensor) and item["image"].shape == (3, Y, X)


def test_target_size_mismatch_and_missing_mask(tmp_path: Path) -> None:
    image, mask = write_volume_pair(tmp_path)
    rec = Record(id="a", image=image, mask=mask, prompts=["x"])
    with pytest.raises(ValueError, match=r"mask size \(5, 6\) differs from image size \(4, 4\)"):
        load_record_target(rec, size=(4, 4))
    gone = Record(id="b", image=image, mask=tmp_path / "none.png", prompts=["x"])
    with pytest.raises(FileNotFoundError):
        load_record_target(gone)
