"""Volumes through the Python API and the CLI: the file's shape, one encoder run, answers equal
to the 2-D path slice by slice, DICOM series and NIfTI agreeing, clear errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import vlseg
from vlseg.cli import main as cli_main
from vlseg.data.phantoms.volume import render_ct_volume, write_dicom_series
from vlseg.data.volume_io import read_volume
from vlseg.volume import EncodedVolume, VolumeResult


@pytest.fixture(scope="module")
def seg():
    return vlseg.load()


@pytest.fixture(scope="module")
def phantom():
    return render_ct_volume(seed=5, index=1, n_slices=10, size=96)


@pytest.fixture(scope="module")
def nifti_path(phantom, tmp_path_factory):
    path = tmp_path_factory.mktemp("vol") / "ct.nii.gz"
    phantom.save_nifti(path)
    return path


def test_segment_volume_returns_the_files_shape_and_measurements(seg, nifti_path):
    shape = nib.load(str(nifti_path)).shape
    res = seg.segment(nifti_path, "the liver")
    assert isinstance(res, VolumeResult)
    assert res.mask.shape == shape and res.probs.shape == shape
    assert res.mask.dtype == bool and res.probs.dtype == np.float32
    assert res.present and res.volume_ml > 0
    sp = res.spacing
    assert res.volume_ml == pytest.approx(res.mask.sum() * sp[0] * sp[1] * sp[2] / 1000)
    assert res.n_components >= 1 and len(res.diameters_mm) >= 1
    long, short = res.diameters_mm[0]
    assert long >= short > 0
    assert res.slices == sorted(res.slices) and res.slices
    assert "mL" in res.summary()


def test_follow_up_prompts_do_not_rerun_the_encoder(seg, nifti_path):
    seg.set_image(nifti_path)
    calls = seg.encoder_calls
    assert isinstance(seg.encoded, EncodedVolume)
    a = seg.segment(text="the spleen")
    b = seg.segment(text=["the aorta", "the spleen"])
    assert seg.encoder_calls == calls
    assert isinstance(b, list) and len(b) == 2
    np.testing.assert_array_equal(a.mask, b[1].mask)  # the repeated prompt: same answer
    assert "the spleen" in seg.encoded.answers


def test_each_slice_answers_as_the_2d_path_does(seg, phantom, nifti_path):
    """Without smoothing over z, a volume slice and the same slice given as a 2-D image get
    the same probabilities (with the 2-D path's edge-aware refinement asked for, or without
    it on both sides)."""
    from vlseg.volume import segment_volume

    vol = read_volume(nifti_path)
    encoded = seg.encode(vol)
    u8 = vol.to_uint8(seg.serving.window)
    spec = seg.serving.refine
    assert spec is not None  # on by default for 2-D answers
    for refine in (spec, None):
        res = segment_volume(
            seg.model, encoded, "the liver", seg.serving, z_smoothing=0.0, refine=refine
        )
        probs = vol.from_stored(res.probs)
        seg.serving.refine = refine
        try:
            for k in (2, 7):
                flat = seg.segment(u8[k], "the liver")  # grey 8-bit image, already windowed
                np.testing.assert_allclose(probs[k], flat.probs, atol=2e-4)
        finally:
            seg.serving.refine = spec
    # a volume is not refined unless asked: its answer is the plain one
    plain = segment_volume(seg.model, encoded, "the liver", seg.serving, z_smoothing=0.0)
    np.testing.assert_array_equal(plain.probs, res.probs)


def test_numpy_volume_with_spacing(seg, phantom):
    arr = phantom.hu.astype(np.float32)
    res = seg.segment(arr, "the liver", spacing=phantom.spacing)
    assert res.mask.shape == arr.shape
    assert res.spacing == pytest.approx(phantom.spacing)


def test_dicom_series_and_nifti_give_the_same_answer(seg, phantom, nifti_path, tmp_path):
    write_dicom_series(tmp_path / "series", phantom.hu, phantom.spacing, shuffle_names=True)
    from_dicom = seg.segment(tmp_path / "series", "the spleen")
    from_nifti = seg.segment(nifti_path, "the spleen")
    # DICOM (S, Rows, Cols); the NIfTI (W, H, S) with A[i, j, k] = D[k, j, i]
    assert from_dicom.mask.shape == phantom.hu.shape
    np.testing.assert_array_equal(from_dicom.mask, from_nifti.mask.transpose(2, 1, 0))
    assert from_dicom.volume_ml == pytest.approx(from_nifti.volume_ml, rel=1e-6)


def test_two_dimensional_inputs_keep_todays_behaviour(seg, phantom):
    res = seg.segment((phantom.hu[5] + 1024).clip(0).astype(np.uint16), "the liver")
    assert type(res).__name__ == "SegmentationResult"
    rgb = np.zeros((32, 32, 3), np.uint8)  # H x W x 3: an image, not a volume of 32 slices
    assert type(seg.segment(rgb, "the liver")).__name__ == "SegmentationResult"


def test_cli_predict_writes_a_nifti_mask_with_the_inputs_shape_and_affine(
    nifti_path, tmp_path, capsys
):
    out = tmp_path / "mask.nii.gz"
    rc = cli_main(
        ["predict", "--image", str(nifti_path), "--text", "the liver", "--out", str(out), "--quiet"]
    )
    assert rc == 0
    src, mask = nib.load(str(nifti_path)), nib.load(str(out))
    assert mask.shape == src.shape
    np.testing.assert_allclose(mask.affine, src.affine)
    assert np.asarray(mask.dataobj).any()
    assert "mL" in capsys.readouterr().out


def test_cli_predict_refuses_a_png_mask_for_a_volume(nifti_path, tmp_path):
    with pytest.raises(SystemExit, match="nii.gz"):
        cli_main(["predict", "--image", str(nifti_path), "--text", "x", "--out", "m.png"])


@pytest.mark.parametrize("out", ["m.nii.gz", "m.jpg"])
def test_cli_predict_refuses_a_non_png_mask_for_a_2d_image(tmp_path, out):
    from PIL import Image

    Image.fromarray(np.zeros((32, 40), np.uint8)).save(tmp_path / "ct.png")
    with pytest.raises(SystemExit, match=r"2-D image.*\.png"):
        cli_main(["predict", "--image", str(tmp_path / "ct.png"), "--text", "x", "--out", out])
    assert not (tmp_path / out).exists()


def test_cli_eval_scores_volume_records(nifti_path, phantom, tmp_path, capsys):
    mask = tmp_path / "liver.nii.gz"
    liver = next(o for o in phantom.objects if o.name == "liver").mask
    img = nib.load(str(nifti_path))
    nib.save(nib.Nifti1Image(liver.transpose(2, 1, 0).astype(np.uint8), img.affine), str(mask))
    rows = [
        {"image": str(nifti_path), "mask": str(mask), "text": "the liver", "split": "test"},
        {"image": str(nifti_path), "mask": None, "text": "the melanoma", "split": "test"},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "metrics.json"
    assert cli_main(["eval", "--data", str(manifest), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["results"]["test"]
    assert metrics["dice"] > 0.8 and metrics["n"] == 1 and metrics["n_all"] == 2
    assert "3-D dice" in capsys.readouterr().out


def test_a_sagittal_dicom_series_is_read_as_its_axial_slices(seg, phantom, tmp_path):
    """A series cut in another plane is resliced to axial display, as a NIfTI file is: the
    model sees the same slices and answers the same (it used to see sagittal slices and call
    the volume out of domain); masks come back in the series' own stored order."""
    import copy

    import pydicom

    paths = write_dicom_series(tmp_path / "axial", phantom.hu, phantom.spacing)
    axial = [pydicom.dcmread(p) for p in paths]  # inferior first, IPP z = k * slice_mm
    stack = np.stack([d.pixel_array for d in axial])  # (z, row, col)
    n, rows, cols = stack.shape
    z_mm, r_mm, c_mm = phantom.spacing
    out = tmp_path / "sagittal"
    out.mkdir()
    for c in range(cols):  # one sagittal slice per column; rows superior -> inferior
        d = copy.deepcopy(axial[0])
        img = np.ascontiguousarray(stack[::-1, :, c])
        d.Rows, d.Columns = img.shape
        d.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        d.PixelSpacing = [z_mm, r_mm]
        d.ImagePositionPatient = [c * c_mm, 0, (n - 1) * z_mm]
        d.SOPInstanceUID = pydicom.uid.generate_uid()
        d.InstanceNumber = c + 1
        d.PixelData = img.tobytes()
        d.save_as(out / f"s{c:03d}.dcm", enforce_file_format=True)
    ax, sag = read_volume(tmp_path / "axial"), read_volume(out)
    assert sag.meta["plane"] == "sagittal" and sag.shape == (cols, n, rows)
    assert (sag.resliced, sag.first_slice_end) == ("sagittal", "superior")
    assert (ax.resliced, ax.first_slice_end) == (None, "inferior")
    # the same axial slices; in stored order along the superior-inferior axis (as NIfTI
    # shows a file), which these sagittal slices' rows run from superior to inferior
    np.testing.assert_array_equal(sag.values[::-1], ax.values)
    assert sag.spacing == pytest.approx(ax.spacing)
    a = seg.segment(tmp_path / "axial", "the left kidney")
    s = seg.segment(out, "the left kidney")
    assert s.verdict == a.verdict and s.volume_ml == pytest.approx(a.volume_ml, rel=1e-6)
    assert s.mask.shape == (cols, n, rows)
    np.testing.assert_array_equal(sag.from_stored(s.mask)[::-1], ax.from_stored(a.mask))


def test_cli_refuses_unwritable_outputs_before_any_work(tmp_path, capsys):
    (tmp_path / "taken.txt").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(SystemExit, match="is a folder"):
        cli_main(["eval", "--data", str(tmp_path), "--out", str(tmp_path / "adir")])
    with pytest.raises(SystemExit, match="is a file"):
        cli_main(["predict", "--data", str(tmp_path), "--out", str(tmp_path / "taken.txt")])
    with pytest.raises(SystemExit, match="is a file"):
        cli_main(["eval-classify", "--data", str(tmp_path), "--out", str(tmp_path / "taken.txt")])
