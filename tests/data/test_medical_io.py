"""Tests for vlseg.data.medical_io through load_image: DICOM and NIfTI values, orientation,
spacing, and which window feeds the model (``rgb``) and which one people see (``display``)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlseg.data import medical_io
from vlseg.data.io import apply_window, load_image, read_image_size


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    spacing: tuple[float, float] | None = (0.7, 0.8),
    window: tuple[float, float] | None = None,
    modality: str = "CT",
    photometric: str = "MONOCHROME2",
    function: str | None = None,
    voi_lut: tuple[int, np.ndarray] | None = None,
) -> Path:
    """A minimal single-frame 16-bit DICOM file.

    ``window`` and ``function`` set Window Center/Width and VOI LUT Function; ``voi_lut`` is
    ``(first input value, 8-bit entries)`` for a VOI LUT Sequence.
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if function is not None:
        ds.VOILUTFunction = function
    if voi_lut is not None:
        first, entries = voi_lut
        item = Dataset()
        item.add_new("LUTDescriptor", "US", [len(entries), first, 8])
        item.add_new("LUTData", "US", [int(v) for v in entries])
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------------
# DICOM and NIfTI

HU = np.array([[-1000, -160, 40], [240, 1000, -1000]])
HU_SOFT_TISSUE = np.array([[0, 0, 128], [255, 255, 0]])


def test_dicom_rescale_soft_tissue_window_and_spacing(tmp_path: Path) -> None:
    stored = (HU + 1024) // 2  # slope 2 must be applied to get HU back
    path = write_dicom(tmp_path / "ct.dcm", stored, slope=2.0, intercept=-1024.0)
    img = load_image(path)
    np.testing.assert_array_equal(img.rgb[:, :, 0], HU_SOFT_TISSUE)
    assert img.spacing == pytest.approx((0.7, 0.8))
    assert img.original_dtype == "uint16"
    assert img.meta["window"] == (40.0, 400.0) and img.meta["format"] == "dicom"
    assert read_image_size(path) == (2, 3)


def test_dicom_file_window_and_explicit_window(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "ct.dcm", HU + 1024, window=(-500, 1000))  # lung-ish
    np.testing.assert_array_equal(load_image(path).rgb[0, :, 0], [0, 214, 255])
    explicit = load_image(path, window=(40, 400)).rgb[:, :, 0]
    np.testing.assert_array_equal(explicit, HU_SOFT_TISSUE)


def test_dicom_monochrome1_inverted_and_no_extension(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "IM0001", HU + 1024, photometric="MONOCHROME1")
    img = load_image(path)  # recognised by the DICM magic
    np.testing.assert_array_equal(img.rgb[:, :, 0], 255 - HU_SOFT_TISSUE)


def test_dicom_non_ct_uses_min_max(tmp_path: Path) -> None:
    stored = np.array([[100, 200], [300, 500]])
    path = write_dicom(tmp_path / "mr.dcm", stored, intercept=0.0, modality="MR", spacing=None)
    img = load_image(path)
    np.testing.assert_array_equal(img.rgb[:, :, 0], [[0, 64], [128, 255]])
    assert img.spacing is None


def test_corrupt_dicom(tmp_path: Path) -> None:
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x01\x02garbage")
    with pytest.raises(ValueError, match=r"bad\.dcm is not a readable image"):
        load_image(tmp_path / "bad.dcm")


def test_missing_pydicom_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.import_module

    def fake(name: str, *args: object) -> object:
        if name == "pydicom":
            raise ImportError("No module named 'pydicom'")
        return real(name, *args)

    monkeypatch.setattr(medical_io.importlib, "import_module", fake)
    (tmp_path / "x.dcm").write_bytes(b"")
    with pytest.raises(ImportError, match=r"pip install vlseg\[medical\]"):
        load_image(tmp_path / "x.dcm")


def make_ct_volume() -> np.ndarray:
    """(X=6, Y=5, Z=3) HU volume; each slice has an air row so it reads as CT."""
    vol = np.full((6, 5, 3), 40, dtype=np.int16)
    vol[:, 0, :] = -1000  # posterior row: air
    vol[:, :, 0] = 240
    vol[:, 0, 0] = -1000
    vol[0, 4, 1] = 1000  # marker: patient left (i=0), anterior (j=4), middle slice
    return vol


def test_nifti_middle_slice_orientation_window_spacing(tmp_path: Path) -> None:
    import nibabel as nib

    affine = np.diag([0.7, 0.8, 2.5, 1.0])  # RAS: i -> right, j -> anterior
    nib.save(nib.Nifti1Image(make_ct_volume(), affine), tmp_path / "ct.nii.gz")
    img = load_image(tmp_path / "ct.nii.gz")
    assert img.size == (5, 6) == read_image_size(tmp_path / "ct.nii.gz")  # rows = y, cols = x
    assert img.spacing == pytest.approx((0.8, 0.7))
    assert img.meta["slice_index"] == 1 and img.meta["window"] == (40.0, 400.0)
    gray = img.rgb[:, :, 0]
    # radiological display: anterior at the top, patient left on the image right
    assert gray[0, 5] == 255
    assert (gray[4] == 0).all()  # the posterior air row is at the bottom
    assert gray[2, 2] == 128  # soft tissue (40 HU) mid-grey
    slice0 = load_image(tmp_path / "ct.nii.gz", slice_index=0).rgb[:, :, 0]
    assert slice0[2, 2] == 255  # 240 HU
    with pytest.raises(ValueError, match=r"slice_index 7 out of range.*0\.\.2"):
        load_image(tmp_path / "ct.nii.gz", slice_index=7)


def test_nifti_lps_affine_shows_the_same_picture(tmp_path: Path) -> None:
    import nibabel as nib

    vol = make_ct_volume()[::-1, ::-1, :]  # same anatomy stored in LPS voxel order
    affine = np.diag([-0.7, -0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol), affine), tmp_path / "lps.nii")
    gray = load_image(tmp_path / "lps.nii").rgb[:, :, 0]
    assert gray[0, 5] == 255 and (gray[4] == 0).all()


def test_nifti_mr_values_min_max(tmp_path: Path) -> None:
    import nibabel as nib

    data = np.array([[0, 100], [200, 400]], dtype=np.float32)  # 2-D, positive: not HU
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "mr.nii")
    img = load_image(tmp_path / "mr.nii")
    # displayed as rows = j (flipped, anterior up), cols = i (flipped, right on the left)
    np.testing.assert_array_equal(img.rgb[:, :, 0], [[255, 64], [128, 0]])
    assert img.meta["window"] is None


def test_corrupt_nifti(tmp_path: Path) -> None:
    (tmp_path / "bad.nii.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"bad\.nii\.gz is not a readable image"):
        load_image(tmp_path / "bad.nii.gz")


# --------------------------------------------------------------------------------------------
# the model's window vs the file's display window (VOI LUT Sequence, VOI LUT Function)

SOFT_TISSUE = (40.0, 400.0)
# HU values that tell windows apart: air, fat, water, soft tissue, liver, bone, dense bone
HU_W = np.array([[-1000, -100, 0, 16], [64, 144, 255, 400]])


def gamma_lut() -> np.ndarray:
    """A 256-entry, 8-bit, non-linear (square-root) LUT spanning 0..255."""
    return np.rint(np.sqrt(np.arange(256) / 255.0) * 255.0).astype(np.int64)


def test_dicom_voi_lut_sequence_is_the_display(tmp_path: Path) -> None:
    lut = gamma_lut()
    # A window is present too: the LUT wins (pydicom's and most viewers' preference).
    path = write_dicom(tmp_path / "lut.dcm", HU_W + 1024, voi_lut=(0, lut), window=(-500, 1000))
    img = load_image(path)
    # Inputs below the LUT's first value take entry 0, above its last take entry 255 (400 HU
    # would wrap to entry 144 if passed to pydicom unclipped: see medical_io).
    expected = lut[np.clip(HU_W, 0, 255)]
    np.testing.assert_array_equal(img.rgb[:, :, 0], expected)  # no window=: the file's view
    np.testing.assert_array_equal(img.display, img.rgb)
    assert img.meta["window_source"] == "file VOI LUT" and img.meta["window"] is None
    assert expected[1, 3] == 255  # the saturating case really is tested


def test_dicom_sigmoid_voi_function(tmp_path: Path) -> None:
    centre, width = 40.0, 400.0
    path = write_dicom(
        tmp_path / "sig.dcm", HU_W + 1024, window=(centre, width), function="SIGMOID"
    )
    img = load_image(path)
    # PS3.3 C.11.2.1.3.1: y = 1 / (1 + exp(-4 (x - c) / w)) on the output range, here 0..255.
    expected = 255.0 / (1.0 + np.exp(-4.0 * (HU_W - centre) / width))
    # pydicom scales to the 16-bit output range and we scale back to 8 bits: the two float
    # paths agree to ~1e-12, which can move a value sitting on .5 by one grey level at most.
    np.testing.assert_allclose(img.rgb[:, :, 0], np.rint(expected), atol=1)
    linear = apply_window(HU_W, centre, width)
    assert np.abs(img.rgb[:, :, 0].astype(int) - linear).max() >= 5  # not the LINEAR function
    assert img.meta["window_source"] == "file" and img.meta["window"] == (centre, width)


def test_model_window_feeds_the_model_file_window_the_display(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "lung.dcm", HU_W + 1024, window=(-500, 1000)
    )  # the file says: lung
    plain = load_image(path)
    img = load_image(path, window=SOFT_TISSUE)  # the model was trained on soft tissue
    np.testing.assert_array_equal(img.rgb[:, :, 0], apply_window(HU_W, *SOFT_TISSUE))
    np.testing.assert_array_equal(img.display, plain.rgb)  # people still see the file's window
    assert not np.array_equal(img.rgb, img.display)
    assert img.display.shape == img.rgb.shape and img.display.dtype == np.uint8
    assert img.meta["window"] == SOFT_TISSUE and img.meta["window_source"] == "model"
    assert img.spacing == pytest.approx((0.7, 0.8))


def test_model_window_over_a_voi_lut_and_without_any_file_window(tmp_path: Path) -> None:
    lut_path = write_dicom(tmp_path / "lut.dcm", HU_W + 1024, voi_lut=(0, gamma_lut()))
    img = load_image(lut_path, window=SOFT_TISSUE)
    np.testing.assert_array_equal(img.rgb[:, :, 0], apply_window(HU_W, *SOFT_TISSUE))
    np.testing.assert_array_equal(img.display[:, :, 0], gamma_lut()[np.clip(HU_W, 0, 255)])
    bare = load_image(write_dicom(tmp_path / "bare.dcm", HU_W + 1024), window=(-600.0, 1500.0))
    np.testing.assert_array_equal(bare.rgb[:, :, 0], apply_window(HU_W, -600, 1500))
    assert bare.display is bare.rgb  # the file names no window: display = model input


def test_monochrome1_display_inverted_model_input_not(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "m1.dcm", HU_W + 1024, photometric="MONOCHROME1", window=SOFT_TISSUE
    )
    img = load_image(path, window=SOFT_TISSUE)
    np.testing.assert_array_equal(img.rgb[:, :, 0], apply_window(HU_W, *SOFT_TISSUE))
    np.testing.assert_array_equal(img.display[:, :, 0], 255 - img.rgb[:, :, 0])


def test_model_window_ignored_where_it_means_nothing(tmp_path: Path) -> None:
    mr = write_dicom(
        tmp_path / "mr.dcm", np.array([[100, 200], [300, 500]]), intercept=0.0, modality="MR"
    )
    np.testing.assert_array_equal(load_image(mr, window=SOFT_TISSUE).rgb, load_image(mr).rgb)
    assert "ignored" in load_image(mr, window=SOFT_TISSUE).meta["window_source"]
    gray8 = np.array([[0, 100], [200, 255]], np.uint8)  # an 8-bit screenshot is windowed already
    Image.fromarray(gray8).save(tmp_path / "g.png")
    for source in (tmp_path / "g.png", gray8, np.stack([gray8] * 3, axis=2)):
        img = load_image(source, window=SOFT_TISSUE)
        np.testing.assert_array_equal(img.rgb[:, :, 0], gray8)
        assert img.meta["window"] is None
    hu16 = HU_W.astype(np.int16)  # physical values do take it
    np.testing.assert_array_equal(
        load_image(hu16, window=SOFT_TISSUE).rgb[:, :, 0], apply_window(HU_W, *SOFT_TISSUE)
    )


def test_nifti_cal_window_is_the_display_model_window_the_input(tmp_path: Path) -> None:
    import nibabel as nib

    vol = np.repeat(HU_W.T[:, :, None], 3, axis=2).astype(np.int16)  # (X=4, Y=2, Z=3)
    img = nib.Nifti1Image(vol, np.diag([0.7, 0.8, 2.5, 1.0]))
    img.header["cal_min"], img.header["cal_max"] = -1000.0, 0.0  # the file's lung-ish window
    nib.save(img, tmp_path / "ct.nii.gz")
    plain = load_image(tmp_path / "ct.nii.gz")
    model = load_image(tmp_path / "ct.nii.gz", window=SOFT_TISSUE)
    shown, _ = medical_io.read_nifti(tmp_path / "ct.nii.gz", max_pixels=100)  # display orientation
    np.testing.assert_array_equal(plain.rgb[:, :, 0], apply_window(shown, -500.0, 1000.0))
    np.testing.assert_array_equal(model.rgb[:, :, 0], apply_window(shown, *SOFT_TISSUE))
    np.testing.assert_array_equal(model.display, plain.rgb)
    assert plain.meta["window"] == (-500.0, 1000.0) and plain.meta["window_source"] == "file"
    assert model.meta["window"] == SOFT_TISSUE and model.meta["window_source"] == "model"


def test_loaded_image_display_defaults_to_rgb() -> None:
    img = load_image(np.zeros((2, 3), np.uint8))
    assert img.display is img.rgb
