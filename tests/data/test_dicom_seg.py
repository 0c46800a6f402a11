"""DICOM SEG output (vlseg.data.dicom_seg): a mask on a DICOM series written with highdicom, read
back, every frame on the source slice it references; and `vlseg predict --out mask.dcm`."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from pydicom.sr.codedict import codes  # noqa: E402

import vlseg  # noqa: E402
from vlseg.cli import main as cli_main  # noqa: E402
from vlseg.data.dicom_seg import (  # noqa: E402
    SEG_NEEDS_SERIES,
    read_source_datasets,
    segment_codes,
    write_mask_dicom_seg,
)
from vlseg.data.phantoms.volume import render_ct_volume, write_dicom_series  # noqa: E402
from vlseg.data.volume_io import read_volume  # noqa: E402

SPACING = (3.0, 0.7, 0.7)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """6 slices of 64x64, file names shuffled (the reader sorts by position)."""
    rng = np.random.default_rng(4)
    hu = rng.integers(-200, 300, size=(6, 64, 64)).astype(np.int16)
    folder = tmp_path_factory.mktemp("seg") / "series"
    write_dicom_series(folder, hu, SPACING, shuffle_names=True, seed=4)
    return folder


def slice_mask(shape=(6, 64, 64)) -> np.ndarray:
    """A different shape on every slice but 0 and 5 (empty), so a frame on the wrong slice or
    flipped shows."""
    mask = np.zeros(shape, dtype=bool)
    for k in range(1, 5):
        mask[k, 5 + 3 * k : 20 + 4 * k, 10 : 12 + 7 * k] = True
    mask[3, 60, 1] = True  # one lone pixel near a corner
    return mask


def source_by_uid(folder):
    """SOPInstanceUID -> (slice index by position, dataset), read independently of vlseg."""
    ds = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return {d.SOPInstanceUID: (k, d) for k, d in enumerate(ds)}


def frame_sources(seg_ds):
    return [
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in seg_ds.PerFrameFunctionalGroupsSequence
    ]


def test_frames_lie_on_the_source_slices_they_reference(series, tmp_path):
    vol = read_volume(series)
    mask = slice_mask()
    out = write_mask_dicom_seg(tmp_path / "lesion.dcm", mask, vol, label="the hepatic lesion")
    assert out == tmp_path / "lesion.dcm"

    raw = pydicom.dcmread(out)  # plain pydicom: the frames and what they reference
    sources = source_by_uid(series)
    first = next(iter(sources.values()))[1]
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and raw.Modality == "SEG"
    assert raw.SegmentationType == "BINARY"
    assert raw.StudyInstanceUID == first.StudyInstanceUID
    assert raw.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert raw.PatientID == first.PatientID and raw.SeriesInstanceUID != first.SeriesInstanceUID
    refs = frame_sources(raw)
    frames = raw.pixel_array.reshape(-1, 64, 64)
    assert int(raw.NumberOfFrames) == len(refs) == 4  # the empty slices 0 and 5 are left out
    seen = set()
    for ref, frame, item in zip(refs, frames, raw.PerFrameFunctionalGroupsSequence, strict=True):
        k, src = sources[ref]
        seen.add(k)
        np.testing.assert_array_equal(frame.astype(bool), mask[k])
        ipp = [float(x) for x in item.PlanePositionSequence[0].ImagePositionPatient]
        assert ipp == pytest.approx([float(x) for x in src.ImagePositionPatient])
    assert seen == {1, 2, 3, 4}
    referenced = {
        i.ReferencedSOPInstanceUID
        for s in raw.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    assert referenced <= set(sources)

    # highdicom's own reader agrees, slice by slice
    seg = hd.seg.segread(out)
    uids = vol.meta["sop_instance_uids"]
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    np.testing.assert_array_equal(px[..., 0].astype(bool), mask)


def test_segment_description(series, tmp_path):
    vol = read_volume(series)
    out = write_mask_dicom_seg(tmp_path / "s.dcm", slice_mask(), vol, label="the hepatic lesion")
    (item,) = pydicom.dcmread(out).SegmentSequence
    assert item.SegmentNumber == 1 and item.SegmentLabel == "the hepatic lesion"
    assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "vlseg"
    alg = item.SegmentationAlgorithmIdentificationSequence[0]
    assert alg.AlgorithmVersion == vlseg.__version__
    family = alg.AlgorithmFamilyCodeSequence[0]
    assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")
    category = item.SegmentedPropertyCategoryCodeSequence[0]
    prop = item.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodeValue, prop.CodeValue) == ("49755003", "52988006")  # abnormal, lesion


def test_property_codes_from_the_prompt():
    lesion = (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion)
    organ = (codes.SCT.AnatomicalStructure, codes.SCT.Organ)
    assert segment_codes("the hepatic lesion") == lesion
    assert segment_codes("Renal cysts") == lesion
    assert segment_codes("the largest tumour") == lesion
    assert segment_codes("the left kidney") == organ
    assert segment_codes("liver") == organ


def test_long_prompt_is_cut_for_the_label_and_kept_whole_in_the_description(series, tmp_path):
    vol = read_volume(series)
    text = "the " + "very " * 20 + "small\\odd lesion"
    out = write_mask_dicom_seg(tmp_path / "s.dcm", slice_mask(), vol, label=text)
    (item,) = pydicom.dcmread(out).SegmentSequence
    assert len(item.SegmentLabel) <= 64 and "\\" not in item.SegmentLabel
    assert item.SegmentDescription == text


def test_zip_series_and_given_datasets_in_any_order(series, tmp_path):
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(series.iterdir()):
            zf.write(p, f"export/{p.name}")
    vol = read_volume(archive)
    mask = slice_mask()
    from_zip = write_mask_dicom_seg(tmp_path / "a.dcm", mask, vol, label="liver")
    given = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())]
    from_given = write_mask_dicom_seg(
        tmp_path / "b.dcm", mask, vol, label="liver", source_datasets=given[::-1]
    )
    uids = vol.meta["sop_instance_uids"]
    for out in (from_zip, from_given):
        seg = hd.seg.segread(out)
        px = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
        np.testing.assert_array_equal(px[..., 0].astype(bool), mask)
    assert [d.SOPInstanceUID for d in read_source_datasets(vol)] == uids


def test_an_empty_mask_keeps_every_frame(series, tmp_path):
    vol = read_volume(series)
    out = write_mask_dicom_seg(tmp_path / "e.dcm", np.zeros(vol.shape, bool), vol, label="liver")
    raw = pydicom.dcmread(out)
    assert int(raw.NumberOfFrames) == 6 and not raw.pixel_array.any()


def test_errors(series, tmp_path):
    vol = read_volume(series)
    arr = read_volume(np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ValueError, match=SEG_NEEDS_SERIES):
        write_mask_dicom_seg(tmp_path / "x.dcm", np.zeros((4, 8, 8), bool), arr, label="liver")
    with pytest.raises(ValueError, match="binary"):
        write_mask_dicom_seg(tmp_path / "x.dcm", slice_mask().astype(np.uint8) * 2, vol, label="x")
    with pytest.raises(ValueError, match="threshold"):
        write_mask_dicom_seg(tmp_path / "x.dcm", slice_mask() * 0.7, vol, label="liver")
    with pytest.raises(ValueError, match="stored shape"):
        write_mask_dicom_seg(tmp_path / "x.dcm", slice_mask()[:5], vol, label="liver")
    with pytest.raises(ValueError, match="one dataset per slice"):
        write_mask_dicom_seg(tmp_path / "x.dcm", slice_mask(), vol, label="x", source_datasets=[])
    assert not (tmp_path / "x.dcm").exists()
    # the folder rewritten with other instances since it was read
    copy = tmp_path / "copy"
    write_dicom_series(copy, np.zeros((6, 64, 64), np.int16), SPACING, seed=4)
    stale = read_volume(copy)
    write_dicom_series(copy, np.zeros((6, 64, 64), np.int16), SPACING, seed=5)
    with pytest.raises(ValueError, match="changed since"):
        write_mask_dicom_seg(tmp_path / "x.dcm", slice_mask(), stale, label="liver")


def test_anonymised_headers_and_missing_geometry(tmp_path):
    """Type 2 attributes an anonymiser dropped are written empty; without slice positions or a
    frame of reference there is nothing to place the frames by: a clear error."""
    folder = tmp_path / "anon"
    write_dicom_series(folder, np.zeros((6, 64, 64), np.int16), SPACING, seed=6)
    for p in folder.iterdir():
        ds = pydicom.dcmread(p)
        for kw in ("PatientBirthDate", "StudyID", "AccessionNumber", "SliceThickness"):
            delattr(ds, kw)
        ds.PatientSex, ds.PatientName = "U", "Anonymous"
        ds.save_as(p)
    vol = read_volume(folder)
    out = write_mask_dicom_seg(tmp_path / "a.dcm", slice_mask(), vol, label="liver")
    raw = pydicom.dcmread(out)
    assert raw.PatientSex == "" and raw.PatientName == "Anonymous" and "StudyID" in raw
    thickness = raw.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness
    assert float(thickness) == SPACING[0]
    for p in folder.iterdir():
        ds = pydicom.dcmread(p)
        del ds.FrameOfReferenceUID
        ds.save_as(p)
    with pytest.raises(ValueError, match="lack FrameOfReferenceUID.*mask.nii.gz"):
        write_mask_dicom_seg(tmp_path / "b.dcm", slice_mask(), read_volume(folder), label="x")


# --------------------------------------------------------------------------------------------
# vlseg predict --out mask.dcm


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    v = render_ct_volume(seed=5, index=1, n_slices=6, size=64)
    write_dicom_series(d / "series", v.hu, v.spacing, shuffle_names=True)
    v.save_nifti(d / "ct.nii.gz")
    return d


def test_cli_predict_writes_a_dicom_seg_equal_to_the_nifti_mask(phantom_series, tmp_path):
    nib = pytest.importorskip("nibabel")
    series = phantom_series / "series"
    args = ["predict", "--image", str(series), "--text", "the liver", "--quiet", "--out"]
    assert cli_main([*args, str(tmp_path / "liver.dcm")]) == 0
    assert cli_main([*args, str(tmp_path / "liver.nii.gz")]) == 0
    nifti = np.asarray(nib.load(str(tmp_path / "liver.nii.gz")).dataobj).transpose(2, 1, 0)
    assert nifti.any()
    vol = read_volume(series)
    seg = hd.seg.segread(tmp_path / "liver.dcm")
    assert seg.SegmentSequence[0].SegmentLabel == "the liver"
    px = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=vol.meta["sop_instance_uids"], segment_numbers=[1]
    )
    np.testing.assert_array_equal(px[..., 0], nifti)


def test_cli_predict_refuses_a_dicom_seg_for_other_inputs(phantom_series, tmp_path):
    base = ["predict", "--text", "the liver", "--out", str(tmp_path / "m.dcm")]
    nifti = str(phantom_series / "ct.nii.gz")
    with pytest.raises(SystemExit, match=f"{SEG_NEEDS_SERIES}.*--out mask.nii.gz"):
        cli_main([*base, "--image", nifti])
    png = tmp_path / "ct.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
    with pytest.raises(SystemExit, match=f"{SEG_NEEDS_SERIES}.*--out mask.png"):
        cli_main([*base, "--image", str(png)])
    assert not (tmp_path / "m.dcm").exists()


def test_a_sagittal_series_gets_one_frame_per_file(tmp_path):
    """A sagittal series is shown as axial slices; its SEG's frames lie on its files."""
    import copy

    paths = write_dicom_series(tmp_path / "ax", np.zeros((6, 20, 24), np.int16), SPACING, seed=3)
    axial = [pydicom.dcmread(p) for p in paths]
    stack = np.stack([d.pixel_array for d in axial])
    n, rows, cols = stack.shape
    folder = tmp_path / "sag"
    folder.mkdir()
    for c in range(cols):
        d = copy.deepcopy(axial[0])
        img = np.ascontiguousarray(stack[::-1, :, c])
        d.Rows, d.Columns = img.shape
        d.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        d.PixelSpacing = [SPACING[0], SPACING[1]]
        d.ImagePositionPatient = [c * SPACING[2], 0, (n - 1) * SPACING[0]]
        d.SOPInstanceUID = pydicom.uid.generate_uid()
        d.PixelData = img.tobytes()
        d.save_as(folder / f"s{c:02d}.dcm", enforce_file_format=True)
    vol = read_volume(folder)
    assert vol.meta["plane"] == "sagittal" and len(vol) == n and vol.shape[0] == cols
    mask = np.zeros(vol.shape, bool)
    mask[5:9, 2:4, 8:12] = True
    out = write_mask_dicom_seg(tmp_path / "s.dcm", mask, vol, label="liver")
    raw = pydicom.dcmread(out)
    assert int(raw.NumberOfFrames) == int(mask.any((1, 2)).sum())  # the files with findings
