"""3-D CT phantom volumes: determinism, coherent anatomy, orientation, NIfTI / DICOM / manifest."""

import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage

from vlseg.cli import main as cli_main
from vlseg.data.phantoms.ct import HELDOUT_COMBOS
from vlseg.data.phantoms.volume import (
    read_nifti_volume,
    render_ct_volume,
    write_dicom_series,
    write_slice_dataset,
    write_volume_dataset,
)

SMALL = {"n_slices": 8, "size": 64}
BALL = np.ones((3, 3, 3), dtype=bool)


def _digest(v):
    h = hashlib.sha256(v.hu.tobytes())
    h.update(repr(v.spacing).encode())
    for t in v.targets:
        h.update(t.key.encode())
        h.update("|".join(t.prompts).encode())
        h.update(np.packbits(v.mask(t)).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def volumes():
    """A few small volumes (regular and held-out) at a size where lesions are a few px wide."""
    regular = [render_ct_volume(4, i, n_slices=10, size=96) for i in range(5)]
    heldout = [render_ct_volume(4, i, n_slices=10, size=96, heldout=True) for i in range(3)]
    return regular, heldout


def test_same_seed_same_bytes_other_index_differs():
    a = render_ct_volume(3, 1, **SMALL)
    b = render_ct_volume(3, 1, **SMALL)
    c = render_ct_volume(3, 2, **SMALL)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert a.hu.shape == (8, 64, 64) and a.hu.dtype == np.int16
    slice_mm, row_mm, col_mm = a.spacing
    assert 2.5 <= slice_mm <= 5.0 and row_mm == col_mm
    assert 340 <= col_mm * 64 <= 420.5  # FOV / size


def test_slices_look_like_classic_phantoms(volumes):
    v = volumes[0][0]
    w = v.windowed()
    assert w.dtype == np.uint8 and w.shape == v.hu.shape
    for k in (0, len(w) - 1):  # dark air to bright bone on every slice, like the 2-D phantoms
        assert w[k].min() < 20 and w[k].max() > 235
    s = v.slice_sample(5)
    assert s.image.shape == (96, 96) and s.modality == "ct"
    for t in s.targets:
        assert (s.mask(t).sum() > 0) == t.positive


def test_organs_are_coherent_across_slices(volumes):
    for v in volumes[0] + volumes[1]:
        for name in ("liver", "spleen", "kidney_right", "kidney_left"):
            m = v.object(name).mask
            present = np.flatnonzero(m.any(axis=(1, 2)))
            assert len(present) >= 2 and np.all(np.diff(present) == 1), (v.id, name)
            for k in present[:-1]:
                a, b = m[k], m[k + 1]
                # One shape, scaled: the smaller section lies inside the larger one ...
                small, big = (a, b) if a.sum() <= b.sum() else (b, a)
                assert (small & big).sum() / small.sum() > 0.85, (v.id, name, k)
                # ... and, away from the organ's ends (where a pole shrinks fast), they agree.
                if present[0] < k < present[-1] - 1:
                    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
                    assert dice > 0.7, (v.id, name, k, dice)
        for name in ("spine", "aorta"):  # on every slice
            assert v.object(name).mask.any(axis=(1, 2)).all(), (v.id, name)


def test_spleen_superior_kidneys_inferior(volumes):
    for v in volumes[0]:
        n = v.hu.shape[0]
        spleen = v.object("spleen").mask.any(axis=(1, 2))
        assert spleen[-1] and not spleen[0], v.id  # slice 0 is the most inferior
        for side in ("right", "left"):
            kid = v.object(f"kidney_{side}").mask.any(axis=(1, 2))
            assert kid[: n // 2].any() and not kid[-1], (v.id, side)
            assert np.flatnonzero(kid).mean() < np.flatnonzero(spleen).mean()
        # The right kidney sits lower than the left one.
        right = v.object("kidney_right").attrs["slices"]
        left = v.object("kidney_left").attrs["slices"]
        assert right[1] <= left[1], v.id


def test_no_left_right_flip(volumes):
    cols = np.arange(96)
    for v in volumes[0]:
        centre = {}
        for side in ("right", "left"):
            m = v.object(f"kidney_{side}").mask
            centre[side] = (m.sum(axis=(0, 1)) * cols).sum() / m.sum()
        # Radiological display: the patient's right is on the image left.
        assert centre["right"] < 48 < centre["left"], v.id
        spleen = v.object("spleen").mask
        assert (spleen.sum(axis=(0, 1)) * cols).sum() / spleen.sum() > 48


def test_lesions_are_3d_blobs_inside_the_liver(volumes):
    regular, heldout = volumes
    found = 0
    for v in regular + heldout:
        liver = v.object("liver").mask
        lesions = [o for o in v.objects if o.category == "hepatic_lesion"]
        taken = np.zeros_like(liver)
        for o in lesions:
            found += 1
            assert o.mask.any() and not (o.mask & ~liver).any(), (v.id, o.name)
            _, n_parts = ndimage.label(o.mask, structure=BALL)
            assert n_parts == 1, (v.id, o.name)
            assert o.mask.any(axis=(1, 2)).sum() >= 2, (v.id, o.name)
            # Lesions never touch each other.
            assert not (ndimage.binary_dilation(o.mask, structure=BALL) & taken).any()
            taken |= o.mask
            assert o.attrs["voxels"] == int(o.mask.sum())
            vox_mm3 = float(np.prod(v.spacing))
            assert o.attrs["volume_mm3"] == pytest.approx(o.attrs["voxels"] * vox_mm3, rel=1e-3)
            # The painted contrast is there: hypo darker, hyper brighter than the liver.
            rest = np.median(v.hu[liver & ~o.mask])
            inside = np.median(v.hu[o.mask])
            assert (inside < rest) == (o.attrs["density"] == "hypo"), (v.id, o.name)
        if len(lesions) > 1:
            biggest = max(lesions, key=lambda o: o.mask.sum())
            assert np.array_equal(v.mask("lesion_largest"), biggest.mask)
    assert found >= 3


def test_heldout_combination_only_in_heldout(volumes):
    regular, heldout = volumes

    def combos(vs):
        return {
            (o.attrs["density"], o.attrs["lobe"])
            for v in vs
            for o in v.objects
            if o.category == "hepatic_lesion"
        }

    assert not combos(regular) & HELDOUT_COMBOS
    for v in heldout:  # every held-out volume shows the reserved combination
        assert combos([v]) & HELDOUT_COMBOS, v.id
    assert {v.split for v in heldout} == {"test_heldout"}
    assert {v.split for v in regular} <= {"train", "val", "test"}


def test_nifti_round_trip(tmp_path):
    import nibabel as nib

    from vlseg.data.medical_io import read_nifti

    v = render_ct_volume(5, 0, **SMALL)
    path = v.save_nifti(tmp_path / "ct.nii.gz")
    img = nib.load(path)
    slice_mm, row_mm, col_mm = v.spacing
    assert img.shape == (64, 64, 8)  # (W, H, S)
    assert np.allclose(img.affine, np.diag([-col_mm, -row_mm, slice_mm, 1.0]))
    assert np.allclose(v.affine, img.affine)
    assert int(img.header["qform_code"]) in (1, 2) and int(img.header["sform_code"]) in (1, 2)
    assert img.get_data_dtype() == np.int16
    a = np.asarray(img.dataobj)
    assert np.array_equal(a, v.hu.transpose(2, 1, 0))  # A[i, j, k] = D[k, j, i]
    stack, spacing = read_nifti_volume(path)
    assert np.array_equal(stack, v.hu) and spacing == pytest.approx(v.spacing)
    # vlseg's own NIfTI reader shows slice k in the same display orientation.
    values, info = read_nifti(path, slice_index=3, max_pixels=10**6)
    assert np.array_equal(values, v.hu[3])
    assert info.spacing == pytest.approx((row_mm, col_mm))
    mask_path = v.save_mask_nifti("kidney_right", tmp_path / "kr.nii.gz")
    m = nib.load(mask_path)
    assert m.get_data_dtype() == np.uint8 and np.allclose(m.affine, img.affine)
    assert np.array_equal(np.asarray(m.dataobj).transpose(2, 1, 0), v.mask("kidney_right"))
    # Bytes are reproducible.
    again = v.save_nifti(tmp_path / "again.nii.gz")
    assert again.read_bytes() == path.read_bytes()
    with pytest.raises(ValueError, match="nii"):
        v.save_nifti(tmp_path / "ct.png")


def test_dicom_series_round_trip(tmp_path):
    import pydicom

    v = render_ct_volume(5, 1, **SMALL)
    paths = write_dicom_series(tmp_path / "a", v.hu, v.spacing, shuffle_names=True, seed=9)
    names = [p.name for p in paths]  # in slice order
    assert len(set(names)) == 8 and names != sorted(names), "names are shuffled"
    files = sorted((tmp_path / "a").iterdir())
    ds = [pydicom.dcmread(f) for f in files]
    ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds])
    assert np.array_equal(hu, v.hu)
    slice_mm, row_mm, col_mm = v.spacing
    for k, d in enumerate(ds):
        assert d.Modality == "CT" and d.SOPClassUID == pydicom.uid.CTImageStorage
        assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert [float(x) for x in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(x) for x in d.ImagePositionPatient] == pytest.approx([0, 0, k * slice_mm])
        assert [float(x) for x in d.PixelSpacing] == pytest.approx([row_mm, col_mm])
        assert float(d.SliceThickness) == pytest.approx(slice_mm)
        assert int(d.InstanceNumber) == k + 1 and (d.Rows, d.Columns) == (64, 64)
    assert len({d.SOPInstanceUID for d in ds}) == 8 and len({d.SeriesInstanceUID for d in ds}) == 1
    # Deterministic UIDs and bytes.
    again = write_dicom_series(tmp_path / "b", v.hu, v.spacing, shuffle_names=True, seed=9)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    plain = write_dicom_series(tmp_path / "c", v.hu, v.spacing)
    assert [p.name for p in plain] == sorted(p.name for p in plain)


def test_volume_dataset_manifest(tmp_path):
    from vlseg.data.manifest import KNOWN_SPLITS, read_manifest, validate_records

    out = write_volume_dataset(tmp_path / "d", 2, 7, heldout=1, quiet=True, **SMALL)
    records = read_manifest(out)
    validate_records(records, splits=(*KNOWN_SPLITS, "test_heldout"))
    raw = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(r["volume"] is True and "spacing" not in r and r["modality"] == "ct" for r in raw)
    assert {r["sample"] for r in raw} == {"vol_0000", "vol_0001", "vol_h0000"}
    assert "test_heldout" in {r["split"] for r in raw}
    vols = {
        "vol_0000": render_ct_volume(7, 0, prompts_per_target=4, **SMALL),
        "vol_0001": render_ct_volume(7, 1, prompts_per_target=4, **SMALL),
        "vol_h0000": render_ct_volume(7, 0, heldout=True, prompts_per_target=4, **SMALL),
    }
    for r in records:
        v = vols[r.extra["sample"]]
        stack, _ = read_nifti_volume(r.image)
        assert np.array_equal(stack, v.hu)
        assert r.prompts == v.target(r.target).prompts
        if r.mask is None:
            assert not r.positive and not v.target(r.target).positive
        else:
            mask, _ = read_nifti_volume(r.mask)
            assert mask.dtype == np.uint8 and np.array_equal(mask.astype(bool), v.mask(r.target))
    assert not (out / "dicom").exists()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_volume_dataset(out, 1, 7, quiet=True, **SMALL)


def test_cli_volumes(tmp_path, capsys):
    import pydicom

    out = tmp_path / "v"
    args = ["phantoms", "--volumes", "--out", str(out), "--n", "1", "--seed", "2"]
    args += ["--slices", "6", "--size", "64", "--dicom", "--quiet"]
    assert cli_main(args) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["n_slices"] == 6 and meta["dicom"] is True
    series = sorted((out / "dicom" / "vol_0000").iterdir())
    assert len(series) == 6
    assert pydicom.dcmread(series[0]).Rows == 64
    assert cli_main(args) == 2 and "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="dermoscopy"):
        cli_main(["phantoms", "--volumes", "--modality", "dermoscopy", "--out", str(out)])
    with pytest.raises(SystemExit, match="--volumes"):
        cli_main(["phantoms", "--dicom", "--out", str(tmp_path / "x")])


def test_slice_dataset_is_every_slice_of_each_volume(tmp_path):
    from vlseg.data.manifest import read_manifest

    out = write_slice_dataset(tmp_path / "s", 2, 7, quiet=True, **SMALL)
    records = read_manifest(out)
    assert {r.extra["sample"] for r in records} == {
        f"vol_000{i}_s{k:03d}" for i in (0, 1) for k in range(8)
    }
    for i in (0, 1):
        v = render_ct_volume(7, i, prompts_per_target=4, **SMALL)
        spleen = {r.extra["sample"]: r.positive for r in records if r.target == "spleen"
                  and r.extra["sample"].startswith(v.id)}  # fmt: skip
        assert spleen == {
            f"{v.id}_s{k:03d}": bool(v.object("spleen").mask[k].any()) for k in range(8)
        }
        assert {r.split for r in records if r.extra["sample"].startswith(v.id)} == {v.split}
    assert json.loads((out / "dataset.json").read_text())["kind"] == "volume-slices"
    args = ["phantoms", "--volumes", "--as-slices", "--out", str(tmp_path / "c"), "--n", "1"]
    assert cli_main([*args, "--slices", "3", "--size", "64", "--quiet"]) == 0
    assert len(list((tmp_path / "c" / "images").iterdir())) == 3
