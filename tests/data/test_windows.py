"""The model's window vs the file's display window: DICOM VOI LUTs and functions, NIfTI, PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlseg.data import medical_io
from vlseg.data.io import apply_window, load_image

SOFT_TISSUE = (40.0, 400.0)
# HU values that tell windows apart: air, fat, water, soft tissue, liver, bone, dense bone
HU = np.array([[-1000, -100, 0, 16], [64, 144, 255, 400]])


def ct_dicom(
    path: Path,
    hu: np.ndarray,
    *,
    modality: str = "CT",
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    function: str | None = None,
    voi_lut: tuple[int, np.ndarray] | None = None,
) -> Path:
    """A 16-bit DICOM slice storing ``hu + 1024`` with intercept -1024, so values read back as HU.

    ``voi_lut`` is ``(first input value, 8-bit LUT entries)`` for a VOI LUT Sequence; ``window``
    and ``function`` set Window Center/Width and VOI LUT Function.
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
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
    ds.PixelSpacing = [0.5, 0.5]
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
    ds.PixelData = (hu + 1024).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def gamma_lut() -> np.ndarray:
    """A 256-entry, 8-bit, non-linear (square-root) LUT spanning 0..255."""
    return np.rint(np.sqrt(np.arange(256) / 255.0) * 255.0).astype(np.int64)


def test_dicom_voi_lut_sequence_is_the_display(tmp_path: Path) -> None:
    lut = gamma_lut()
    # A window is present too: the LUT wins (pydicom's and most viewers' preference).
    path = ct_dicom(tmp_path / "lut.dcm", HU, voi_lut=(0, lut), window=(-500, 1000))
    img = load_image(path)
    # Inputs below the LUT's first value take entry 0, above its last take entry 255 (400 HU
    # would wrap to entry 144 if passed to pydicom unclipped: see medical_io).
    expected = lut[np.clip(HU, 0, 255)]
    np.testing.assert_array_equal(img.rgb[:, :, 0], expected)  # no window=: the file's view
    np.testing.assert_array_equal(img.display, img.rgb)
    assert img.meta["window_source"] == "file VOI LUT" and img.meta["window"] is None
    assert expected[1, 3] == 255  # the saturating case really is tested


def test_dicom_sigmoid_voi_function(tmp_path: Path) -> None:
    centre, width = 40.0, 400.0
    path = ct_dicom(tmp_path / "sig.dcm", HU, window=(centre, width), function="SIGMOID")
    img = load_image(path)
    # PS3.3 C.11.2.1.3.1: y = 1 / (1 + exp(-4 (x - c) / w)) on the output range, here 0..255.
    expected = 255.0 / (1.0 + np.exp(-4.0 * (HU - centre) / width))
    # pydicom scales to the 16-bit output range and we scale back to 8 bits: the two float
    # paths agree to ~1e-12, which can move a value sitting on .5 by one grey level at most.
    np.testing.assert_allclose(img.rgb[:, :, 0], np.rint(expected), atol=1)
    linear = apply_window(HU, centre, width)
    assert np.abs(img.rgb[:, :, 0].astype(int) - linear).max() >= 5  # not the LINEAR function
    assert img.meta["window_source"] == "file" and img.meta["window"] == (centre, width)


def test_model_window_feeds_the_model_file_window_the_display(tmp_path: Path) -> None:
    path = ct_dicom(tmp_path / "lung.dcm", HU, window=(-500, 1000))  # the file says: lung
    plain = load_image(path)
    img = load_image(path, window=SOFT_TISSUE)  # the model was trained on soft tissue
    np.testing.assert_array_equal(img.rgb[:, :, 0], apply_window(HU, *SOFT_TISSUE))
    np.testing.assert_array_equal(img.display, plain.rgb)  # people still see the file's window
    assert not np.array_equal(img.rgb, img.display)
    assert img.display.shape == img.rgb.shape and img.display.dtype == np.uint8
    assert img.meta["window"] == SOFT_TISSUE and img.meta["window_source"] == "model"
    assert img.spacing == pytest.approx((0.5, 0.5))


def test_model_window_over_a_voi_lut_and_without_any_file_window(tmp_path: Path) -> None:
    lut_path = ct_dicom(tmp_path / "lut.dcm", HU, voi_lut=(0, gamma_lut()))
    img = load_image(lut_path, window=SOFT_TISSUE)
    np.testing.assert_array_equal(img.rgb[:, :, 0], apply_window(HU, *SOFT_TISSUE))
    np.testing.assert_array_equal(img.display[:, :, 0], gamma_lut()[np.clip(HU, 0, 255)])
    bare = load_image(ct_dicom(tmp_path / "bare.dcm", HU), window=(-600.0, 1500.0))
    np.testing.assert_array_equal(bare.rgb[:, :, 0], apply_window(HU, -600, 1500))
    assert bare.display is bare.rgb  # the file names no window: display = model input


def test_monochrome1_display_inverted_model_input_not(tmp_path: Path) -> None:
    path = ct_dicom(tmp_path / "m1.dcm", HU, photometric="MONOCHROME1", window=SOFT_TISSUE)
    img = load_image(path, window=SOFT_TISSUE)
    np.testing.assert_array_equal(img.rgb[:, :, 0], apply_window(HU, *SOFT_TISSUE))
    np.testing.assert_array_equal(img.display[:, :, 0], 255 - img.rgb[:, :, 0])


def test_model_window_ignored_where_it_means_nothing(tmp_path: Path) -> None:
    mr = ct_dicom(tmp_path / "mr.dcm", np.array([[100, 200], [300, 500]]), modality="MR")
    np.testing.assert_array_equal(load_image(mr, window=SOFT_TISSUE).rgb, load_image(mr).rgb)
    assert "ignored" in load_image(mr, window=SOFT_TISSUE).meta["window_source"]
    gray8 = np.array([[0, 100], [200, 255]], np.uint8)  # an 8-bit screenshot is windowed already
    Image.fromarray(gray8).save(tmp_path / "g.png")
    for source in (tmp_path / "g.png", gray8, np.stack([gray8] * 3, axis=2)):
        img = load_image(source, window=SOFT_TISSUE)
        np.testing.assert_array_equal(img.rgb[:, :, 0], gray8)
        assert img.meta["window"] is None
    hu16 = HU.astype(np.int16)  # physical values do take it
    np.testing.assert_array_equal(
        load_image(hu16, window=SOFT_TISSUE).rgb[:, :, 0], apply_window(HU, *SOFT_TISSUE)
    )


def test_nifti_cal_window_is_the_display_model_window_the_input(tmp_path: Path) -> None:
    import nibabel as nib

    vol = np.repeat(HU.T[:, :, None], 3, axis=2).astype(np.int16)  # (X=4, Y=2, Z=3)
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
