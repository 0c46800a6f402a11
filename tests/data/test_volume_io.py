"""Tests for vlseg.data.volume_io: NIfTI, DICOM series (folder and .zip) and numpy volumes,
display orientation, stored order, geometry, and masks written back as NIfTI."""

from __future__ import annotations

import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vlseg.data import medical_io
from vlseg.data.volume_io import Volume, is_volume_source, read_volume, write_mask_nifti

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


# --------------------------------------------------------------------------------------------
# synthetic data


def hu_volume(shape: tuple[int, int, int] = (6, 5, 4), seed: int = 0) -> np.ndarray:
    """int16 HU values, every voxel distinct enough to catch a wrong flip or transpose."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1500, size=shape).astype(np.int16)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, **header: float) -> Path:
    img = nib.Nifti1Image(data, affine)
    if "slope" in header:
        img.header.set_slope_inter(header["slope"], header["inter"])
    nib.save(img, path)
    return path


def write_slice(
    path: Path,
    stored: np.ndarray,
    *,
    ipp: tuple[float, float, float] | None,
    iop: tuple[float, ...] | None = AXIAL,
    spacing: tuple[float, float] = (0.7, 0.8),
    series: str = "1.2.826.0.1.3680043.8.498.1",
    description: str = "AX CT",
    instance: int | None = 1,
    slope: float = 1.0,
    intercept: float = -1024.0,
    window: tuple[float, float] | None = None,
    frames: int = 1,
    **tags: object,
) -> Path:
    """A single-frame (or ``frames``-frame) CT Image Storage file, explicit VR little endian."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series
    ds.SeriesDescription = description
    if instance is not None:
        ds.InstanceNumber = instance
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelSpacing = list(spacing)
    if iop is not None:
        ds.ImageOrientationPatient = list(iop)
    if ipp is not None:
        ds.ImagePositionPatient = list(ipp)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_series(
    folder: Path,
    hu: np.ndarray,
    *,
    z: list[float] | None = None,
    iop: tuple[float, ...] = AXIAL,
    origin: tuple[float, float, float] = (-100.0, -120.0, 0.0),
    slope: float = 1.0,
    **kw: object,
) -> list[Path]:
    """``hu`` (S, Rows, Cols), slice ``k`` at distance ``z[k]`` along the slice normal from
    ``origin``; files get shuffled names and InstanceNumbers running opposite to position."""
    folder.mkdir(parents=True, exist_ok=True)
    z = [10.0 + 2.5 * k for k in range(len(hu))] if z is None else z
    normal = np.cross(iop[:3], iop[3:])
    names = [f"IM{n:04d}" for n in random.Random(1).sample(range(1000), len(hu))]
    paths = []
    for k in range(len(hu)):
        ipp = tuple(float(v) for v in np.asarray(origin) + z[k] * normal)
        stored = (hu[k].astype(np.float64) + 1024.0) / slope
        paths.append(
            write_slice(
                folder / names[k],
                np.rint(stored),
                ipp=ipp,
                iop=iop,
                instance=len(hu) - k,
                slope=slope,
                **kw,  # type: ignore[arg-type]
            )
        )
    return paths


def zip_folder(folder: Path, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("series/", b"")  # a directory entry
        for f in sorted(folder.iterdir()):
            zf.write(f, f"series/{f.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


# --------------------------------------------------------------------------------------------
# NIfTI

PERMUTED = np.array(  # slice axis first: i -> superior, j -> anterior, k -> right
    [[0.0, 0.0, 0.7, -10.0], [0.0, 0.8, 0.0, 5.0], [2.5, 0.0, 0.0, 30.0], [0.0, 0.0, 0.0, 1.0]]
)
# i -> left, j -> superior, k -> anterior (acquired coronal): slices still cut the S axis (j)
CORONAL_STACK = np.array(
    [[-0.7, 0.0, 0.0, 0.0], [0.0, 0.0, 2.5, 0.0], [0.0, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


@pytest.mark.parametrize(
    ("affine", "spacing"),
    [
        (np.diag([0.7, 0.8, 2.5, 1.0]), (2.5, 0.8, 0.7)),  # RAS
        (np.diag([-0.7, -0.8, 2.5, 1.0]), (2.5, 0.8, 0.7)),  # LPS-like
        (PERMUTED, (2.5, 0.8, 0.7)),
        (CORONAL_STACK, (0.8, 2.5, 0.7)),
    ],
    ids=["ras", "lps", "slice-axis-first", "coronal"],
)
def test_nifti_slices_equal_read_nifti(tmp_path: Path, affine: np.ndarray, spacing) -> None:
    data = hu_volume()
    path = save_nifti(tmp_path / "ct.nii.gz", data, affine)
    vol = read_volume(path)
    plane = medical_io._nifti_plane(nib.load(path), path)
    assert len(vol) == data.shape[plane.through] == vol.values.shape[0]
    assert vol.values.dtype == np.float32
    for k in range(len(vol)):
        ref, _ = medical_io.read_nifti(path, slice_index=k, max_pixels=10**6)
        np.testing.assert_array_equal(vol.values[k], ref.astype(np.float32))
    assert vol.spacing == pytest.approx(spacing)
    assert read_volume(path, spacing=(3, 2, 1)).spacing == (3.0, 2.0, 1.0)  # an override
    assert vol.shape == data.shape
    np.testing.assert_array_equal(vol.affine, nib.load(path).affine)
    assert vol.meta["format"] == "nifti" and vol.meta["ct"] is True
    assert vol.meta["slice_axis"] == plane.through
    # stored <-> display: exact inverses, and the stored view is the file's array
    np.testing.assert_array_equal(vol.to_stored(vol.values), data.astype(np.float32))
    np.testing.assert_array_equal(vol.to_stored(vol.from_stored(data)), data)
    shown = vol.from_stored(data)
    np.testing.assert_array_equal(vol.from_stored(vol.to_stored(shown)), shown)


def test_nifti_scaling_applied_like_read_nifti(tmp_path: Path) -> None:
    raw = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    path = save_nifti(tmp_path / "s.nii", raw, np.eye(4), slope=2.0, inter=-1024.0)
    vol = read_volume(path)
    for k in range(len(vol)):
        ref, _ = medical_io.read_nifti(path, slice_index=k, max_pixels=10**6)
        np.testing.assert_array_equal(vol.values[k], ref.astype(np.float32))
    np.testing.assert_array_equal(vol.to_stored(vol.values), raw * 2.0 - 1024.0)


def test_nifti_cal_window_is_the_display(tmp_path: Path) -> None:
    img = nib.Nifti1Image(hu_volume(), np.eye(4))
    img.header["cal_min"], img.header["cal_max"] = -160.0, 240.0
    nib.save(img, tmp_path / "w.nii.gz")
    vol = read_volume(tmp_path / "w.nii.gz")
    assert vol.meta["file_window"] == (40.0, 400.0)
    np.testing.assert_array_equal(
        vol.display_uint8(), medical_io.apply_window(vol.values, 40.0, 400.0)
    )
    np.testing.assert_array_equal(
        vol.to_uint8((-600.0, 1500.0)), medical_io.apply_window(vol.values, -600.0, 1500.0)
    )


def test_nifti_4d_with_one_volume_keeps_its_trailing_axis(tmp_path: Path) -> None:
    data = hu_volume()[..., None]  # (6, 5, 4, 1)
    path = save_nifti(tmp_path / "one.nii.gz", data, np.diag([-0.7, -0.8, 2.5, 1.0]))
    vol = read_volume(path)
    assert vol.shape == (6, 5, 4, 1) and vol.values.shape == (4, 5, 6)
    np.testing.assert_array_equal(vol.to_stored(vol.values), data.astype(np.float32))
    mask = vol.to_stored(vol.values > 0)
    assert mask.shape == (6, 5, 4, 1)
    out = write_mask_nifti(tmp_path / "mask.nii.gz", mask, vol)
    back = nib.load(out)
    assert back.shape == (6, 5, 4, 1)
    np.testing.assert_array_equal(np.asarray(back.dataobj), mask.astype(np.uint8))


def test_nifti_4d_with_two_volumes_refused(tmp_path: Path) -> None:
    path = save_nifti(tmp_path / "fmri.nii.gz", np.zeros((4, 5, 3, 2), np.int16), np.eye(4))
    with pytest.raises(ValueError, match=r"\(4, 5, 3, 2\).*2 volumes.*[Ee]xtract one"):
        read_volume(path)
    assert not is_volume_source(path)


def test_two_d_inputs_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"2-D.*load_image"):
        read_volume(np.zeros((8, 8), np.float32))
    path = save_nifti(tmp_path / "flat.nii", np.zeros((8, 8), np.int16), np.eye(4))
    with pytest.raises(ValueError, match=r"2-D.*load_image"):
        read_volume(path)
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"not a volume.*load_image"):
        read_volume(tmp_path / "x.png")


def test_write_mask_nifti_round_trip_keeps_shape_affine_and_codes(tmp_path: Path) -> None:
    data = hu_volume()
    img = nib.Nifti1Image(data, PERMUTED)
    img.header.set_qform(PERMUTED, code=1)
    img.header.set_sform(PERMUTED, code=2)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, tmp_path / "src.nii.gz")
    vol = read_volume(tmp_path / "src.nii.gz")
    shown = vol.values > 100
    out = write_mask_nifti(tmp_path / "out" / "mask.nii.gz", vol.to_stored(shown), vol)
    assert out == tmp_path / "out" / "mask.nii.gz"
    assert [p.name for p in out.parent.iterdir()] == ["mask.nii.gz"]  # no temporaries left
    back = nib.load(out)
    assert back.shape == data.shape and back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(back.dataobj), (data > 100).astype(np.uint8))
    np.testing.assert_array_equal(back.affine, nib.load(tmp_path / "src.nii.gz").affine)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 2
    # reading the mask back as a volume shows it where the source showed the finding
    np.testing.assert_array_equal(read_volume(out).values, shown.astype(np.float32))
    with pytest.raises(ValueError, match="stored shape"):
        write_mask_nifti(tmp_path / "m.nii.gz", np.zeros((4, 5, 6), bool), vol)
    with pytest.raises(ValueError, match=r"\.nii"):
        write_mask_nifti(tmp_path / "m.png", vol.to_stored(shown), vol)
    with pytest.raises(ValueError, match="threshold"):
        write_mask_nifti(tmp_path / "m.nii", vol.to_stored(vol.values), vol)


# --------------------------------------------------------------------------------------------
# DICOM series


def test_dicom_series_in_anatomical_order_with_exact_hu(tmp_path: Path) -> None:
    hu = hu_volume((5, 6, 7))
    make_series(tmp_path / "s", hu, z=[10.0, 12.5, 15.0, 17.5, 20.0], window=(40.0, 400.0))
    vol = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.values, hu.astype(np.float32))  # ascending position
    assert vol.shape == (5, 6, 7) and len(vol) == 5
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert vol.meta["format"] == "dicom-series" and vol.meta["ct"] is True
    assert vol.meta["file_window"] == (40.0, 400.0) and vol.meta["n_files"] == 5
    assert vol.meta["plane"] == "axial" and vol.meta["irregular_spacing"] is False
    np.testing.assert_array_equal(vol.to_stored(vol.values), vol.values)  # identity
    np.testing.assert_array_equal(vol.display_uint8(), medical_io.apply_window(hu, 40.0, 400.0))
    # the stored affine maps (slice, row, col) to RAS: LPS of the DICOM pixel with x, y negated
    s, r, c = 3, 2, 5
    lps = (
        np.array([-100.0, -120.0, 17.5])
        + r * 0.7 * np.array([0, 1, 0])
        + c * 0.8 * np.array([1, 0, 0])
    )
    np.testing.assert_allclose(vol.affine @ [s, r, c, 1], [-lps[0], -lps[1], lps[2], 1])


def test_monochrome1_inverted_for_display_only(tmp_path: Path) -> None:
    hu = hu_volume((3, 4, 4))
    make_series(tmp_path / "s", hu, PhotometricInterpretation="MONOCHROME1")
    vol = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.values, hu.astype(np.float32))
    model_input = medical_io.apply_window(hu, 40.0, 400.0)
    np.testing.assert_array_equal(vol.to_uint8((40.0, 400.0)), model_input)
    np.testing.assert_array_equal(vol.display_uint8(), 255 - model_input)  # soft tissue, inverted


def test_dicom_slope_applied(tmp_path: Path) -> None:
    hu = (hu_volume((3, 4, 4)) // 2) * 2  # even values: exact with slope 2
    make_series(tmp_path / "s", hu, slope=2.0)
    np.testing.assert_array_equal(read_volume(tmp_path / "s").values, hu.astype(np.float32))


def test_zip_of_the_series_gives_the_same_volume(tmp_path: Path) -> None:
    hu = hu_volume((4, 5, 6))
    make_series(tmp_path / "s", hu)
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

    meta = FileMetaDataset()  # a DICOMDIR-like file: valid DICOM, no image
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicomdir = FileDataset("DICOMDIR", {}, file_meta=meta, preamble=b"\0" * 128)
    dicomdir.FileSetID = "NO IMAGE"
    (tmp_path / "x").mkdir()
    dicomdir.save_as(tmp_path / "x" / "DICOMDIR", enforce_file_format=True)
    extra = {
        "__MACOSX/series/._IM0001": b"\0\5\26\7junk",
        "series/README.txt": b"not dicom",
        "DICOMDIR": (tmp_path / "x" / "DICOMDIR").read_bytes(),
    }
    zipped = zip_folder(tmp_path / "s", tmp_path / "series.zip", extra)
    a, b = read_volume(tmp_path / "s"), read_volume(zipped)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.shape == b.shape and a.spacing == b.spacing
    assert b.meta["skipped_files"] == 2  # README and DICOMDIR (the __MACOSX entry is skipped)
    assert not list(tmp_path.glob("**/IM*.dcm"))  # nothing extracted


def test_dicom_to_nifti_affine_maps_voxels_to_the_dicom_pixels(tmp_path: Path) -> None:
    t = np.deg2rad(20.0)  # an axial series rotated in-plane, oblique to the scanner axes
    iop = (np.cos(t), np.sin(t), 0.0, -np.sin(t), np.cos(t), 0.0)
    hu = hu_volume((4, 5, 6))
    origin = (-50.0, 30.0, 100.0)
    z = [0.0, 3.0, 6.0, 9.0]
    make_series(tmp_path / "s", hu, z=z, iop=iop, origin=origin)
    vol = read_volume(tmp_path / "s")
    mask = vol.values > 0
    out = write_mask_nifti(tmp_path / "mask.nii.gz", vol.to_stored(mask), vol)
    img = nib.load(out)
    assert img.shape == (6, 5, 4)  # (Cols, Rows, S)
    data = np.asarray(img.dataobj)
    x, y = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(x, y)
    row_mm, col_mm = 0.7, 0.8
    for i, j, k in [(0, 0, 0), (5, 0, 0), (0, 4, 0), (5, 4, 3), (2, 3, 1)]:
        lps = np.asarray(origin) + z[k] * normal + i * col_mm * x + j * row_mm * y
        ras = img.affine @ [i, j, k, 1]
        np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-6)
        assert data[i, j, k] == mask[k, j, i]
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1


@pytest.mark.parametrize(
    ("iop", "axes"), [(AXIAL, (0, 1, 2)), (CORONAL, (1, 0, 2))], ids=["axial", "coronal"]
)
def test_dicom_mask_reads_back_in_the_same_display_orientation(tmp_path: Path, iop, axes) -> None:
    hu = hu_volume((3, 5, 6))
    make_series(tmp_path / "s", hu, iop=iop)
    vol = read_volume(tmp_path / "s")
    labels = (np.arange(vol.values.size) % 200).reshape(vol.values.shape).astype(np.uint8)
    out = write_mask_nifti(tmp_path / "labels.nii", vol.to_stored(labels), vol)
    # Both readers show axial slices in the radiological display (the NIfTI slices are always
    # the axis closest to S), so the written mask reads back as it was given: for an axial
    # series the very picture of the DICOM slices; a coronal series is resliced: slice j is row
    # j of every coronal slice, anterior (the first slice) at the top, and the patient's right
    # still on the image's left.
    np.testing.assert_array_equal(read_volume(out).values, labels)
    stored = np.asarray(vol.to_stored(labels))  # the series' own (slice, row, col) order
    np.testing.assert_array_equal(stored.transpose(axes), labels)


def test_irregular_gaps_warn_and_use_the_median(tmp_path: Path) -> None:
    make_series(tmp_path / "s", hu_volume((4, 3, 3)), z=[0.0, 2.0, 4.0, 8.0])
    with pytest.warns(UserWarning, match="irregular slice spacing"):
        vol = read_volume(tmp_path / "s")
    assert vol.spacing == pytest.approx((2.0, 0.7, 0.8))
    assert vol.meta["irregular_spacing"] is True
    assert vol.meta["slice_gaps_mm"] == pytest.approx({"min": 2.0, "median": 2.0, "max": 4.0})


def test_missing_positions_fall_back_to_instance_number(tmp_path: Path) -> None:
    hu = hu_volume((3, 3, 3))
    for k in range(3):
        write_slice(tmp_path / f"f{k}.dcm", hu[k] + 1024, ipp=None, iop=None, instance=3 - k)
    with pytest.warns(UserWarning, match="InstanceNumber"):
        vol = read_volume(tmp_path)
    np.testing.assert_array_equal(vol.values, hu[::-1].astype(np.float32))
    assert vol.spacing is None and vol.meta["slice_order"] == "InstanceNumber"


def test_malformed_series(tmp_path: Path) -> None:
    hu = hu_volume((3, 4, 4))
    # several series
    make_series(tmp_path / "two", hu)
    make_series(tmp_path / "two" / "b", hu[:2], series="1.2.3.9", description="LOCALIZER")
    with pytest.raises(ValueError, match=r"2 DICOM series.*1\.2\.3\.9.*LOCALIZER.*2 files.*own"):
        read_volume(tmp_path / "two")
    # mixed slice sizes
    make_series(tmp_path / "sizes", hu)
    write_slice(tmp_path / "sizes" / "odd.dcm", np.zeros((2, 3)), ipp=(0, 0, 90))
    with pytest.raises(ValueError, match=r"mixed slice sizes: 4x4 \(3 files\) and 2x3 \(1 file\)"):
        read_volume(tmp_path / "sizes")
    # mixed orientations
    make_series(tmp_path / "orient", hu)
    write_slice(tmp_path / "orient" / "cor.dcm", np.zeros((4, 4)), ipp=(0, 0, 0), iop=CORONAL)
    with pytest.raises(ValueError, match=r"mixed orientations.*3 files.*1 file"):
        read_volume(tmp_path / "orient")
    # duplicate positions
    make_series(tmp_path / "dup", hu, z=[0.0, 0.0, 5.0])
    with pytest.raises(ValueError, match=r"duplicate slice positions: 2 files share"):
        read_volume(tmp_path / "dup")
    # a 4-D series: every position twice, told apart by TemporalPositionIdentifier
    for t in (1, 2):
        make_series(tmp_path / "4d" / f"t{t}", hu, TemporalPositionIdentifier=t)
    with pytest.raises(ValueError, match=r"4-D series.*TemporalPositionIdentifier"):
        read_volume(tmp_path / "4d")
    # multi-frame
    write_slice(tmp_path / "mf" / "a.dcm", np.zeros((2, 4, 4)), ipp=(0, 0, 0), frames=2)
    with pytest.raises(ValueError, match="multi-frame.*not supported yet"):
        read_volume(tmp_path / "mf")
    with pytest.raises(ValueError, match="multi-frame.*not supported yet"):
        read_volume(tmp_path / "mf" / "a.dcm")
    with pytest.warns(UserWarning, match=r"multi-frame DICOM file \(2 frames\).*middle frame 1"):
        values, info = medical_io.read_dicom(tmp_path / "mf" / "a.dcm", max_pixels=10**6)
    assert values.shape == (4, 4) and info.meta["frame"] == 1
    # a single file
    write_slice(tmp_path / "one" / "a.dcm", np.zeros((4, 4)), ipp=(0, 0, 0))
    with pytest.raises(ValueError, match="single DICOM.*load_image"):
        read_volume(tmp_path / "one")
    with pytest.raises(ValueError, match="single DICOM file.*load_image"):
        read_volume(tmp_path / "one" / "a.dcm")
    # an empty folder, and one holding no DICOM
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no DICOM image files"):
        read_volume(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"no DICOM image files found \(1 file"):
        read_volume(tmp_path / "text")


def test_max_voxels_checked_before_reading(tmp_path: Path) -> None:
    make_series(tmp_path / "s", hu_volume((3, 4, 4)))
    with pytest.raises(ValueError, match=r"48 voxels exceeds.*max_voxels"):
        read_volume(tmp_path / "s", max_voxels=47)
    path = save_nifti(tmp_path / "v.nii", hu_volume(), np.eye(4))
    with pytest.raises(ValueError, match="max_voxels"):
        read_volume(path, max_voxels=10)
    zipped = zip_folder(tmp_path / "s", tmp_path / "s.zip", {"big.bin": bytes(2**26)})
    with pytest.raises(ValueError, match="unpacks to"):
        read_volume(zipped, max_voxels=48)


# --------------------------------------------------------------------------------------------
# numpy, windows, is_volume_source


def test_numpy_volume() -> None:
    arr = np.stack([np.full((4, 5), v, np.int16) for v in (0, 100, 200)])
    vol = read_volume(arr, spacing=(2.0, 0.5, 0.6))
    assert vol.shape == (3, 4, 5) and vol.spacing == (2.0, 0.5, 0.6)
    np.testing.assert_array_equal(vol.affine, np.diag([2.0, 0.5, 0.6, 1.0]))
    assert vol.meta["format"] == "array" and vol.meta["ct"] is False
    np.testing.assert_array_equal(vol.to_stored(vol.values), arr)
    # one min-max over the whole volume, not per slice; the window is ignored (not CT)
    u8 = vol.to_uint8((40.0, 400.0))
    assert [int(u8[k, 0, 0]) for k in range(3)] == [0, 128, 255]
    np.testing.assert_array_equal(vol.display_uint8(), vol.to_uint8(None))  # no file window
    assert not read_volume(np.full((2, 3, 5), 7.0)).to_uint8(None).any()  # constant -> zeros
    assert read_volume(arr).spacing is None
    with pytest.raises(ValueError, match="spacing"):
        read_volume(arr, spacing=(1.0, 0.0, 1.0))
    with pytest.warns(UserWarning, match="colour image"):
        read_volume(np.zeros((4, 4, 3), np.uint8))


def test_ct_array_window_applies() -> None:
    arr = np.full((2, 10, 10), 40.0, np.float32)
    arr[:, 0, :] = -1000.0  # 10% air: looks like HU
    vol = read_volume(arr)
    assert vol.meta["ct"] is True
    np.testing.assert_array_equal(
        vol.to_uint8((40.0, 400.0)), medical_io.apply_window(arr, 40.0, 400.0)
    )
    np.testing.assert_array_equal(vol.display_uint8(), vol.to_uint8((40.0, 400.0)))


def test_is_volume_source(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "s.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    save_nifti(tmp_path / "v.nii.gz", hu_volume(), np.eye(4))
    save_nifti(tmp_path / "one.nii.gz", hu_volume((6, 5, 1)), np.eye(4))
    save_nifti(tmp_path / "flat.nii", np.zeros((6, 5), np.int16), np.eye(4))
    assert is_volume_source(tmp_path / "d") and is_volume_source(str(tmp_path / "s.zip"))
    assert is_volume_source(tmp_path / "v.nii.gz")
    assert not is_volume_source(tmp_path / "one.nii.gz")
    assert not is_volume_source(tmp_path / "flat.nii")
    assert not is_volume_source(tmp_path / "missing.nii.gz")
    assert is_volume_source(np.zeros((10, 32, 32)))
    for shape in [(32, 32, 1), (32, 32, 3), (32, 32, 4), (32, 32), (2, 3, 4, 5)]:
        assert not is_volume_source(np.zeros(shape))
    assert is_volume_source(read_volume(np.zeros((2, 3, 5))))
    assert isinstance(read_volume(read_volume(np.zeros((2, 3, 5)))), Volume)


def test_no_warnings_for_a_clean_series(tmp_path: Path) -> None:
    make_series(tmp_path / "s", hu_volume((3, 4, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_volume(tmp_path / "s")


def test_monochrome1_without_hounsfield_units_is_inverted_for_the_model(tmp_path: Path) -> None:
    """Not CT (no Hounsfield units): low stored values are the bright ones, so the model input
    is the inverted min-max rescale, as for the same file read as a 2-D image (it was given the
    raw, negative picture and answered differently from the MONOCHROME2 twin)."""
    stored = hu_volume((3, 4, 4)) + 1024
    make_series(tmp_path / "m2", stored, Modality="OT", intercept=0.0)
    make_series(tmp_path / "m1", stored.max() - stored, Modality="OT", intercept=0.0,
                PhotometricInterpretation="MONOCHROME1")  # fmt: skip
    m1, m2 = read_volume(tmp_path / "m1"), read_volume(tmp_path / "m2")
    assert not m1.meta["ct"] and m1.meta["invert"]
    np.testing.assert_array_equal(m1.to_uint8(None), m2.to_uint8(None))
    np.testing.assert_array_equal(m1.display_uint8(), m2.display_uint8())


def test_a_channels_first_colour_array_warns() -> None:
    with pytest.warns(UserWarning, match=r"channels-first colour image.*moveaxis"):
        vol = read_volume(np.zeros((3, 16, 20), np.uint8))
    assert len(vol) == 3
