"""Masks on a DICOM series written back as a DICOM Segmentation (SEG) object, with highdicom.

A NIfTI mask (:func:`vlseg.data.volume_io.write_mask_nifti`) overlays the series in research
viewers; a DICOM SEG is what a PACS, OHIF or 3D Slicer's DICOM module take in. It belongs to the
source series' study (patient and study attributes copied from the source), and each of its
frames names the source slice it lies on (by SOPInstanceUID), so a viewer overlays it without
any resampling.

What is written, for one prompt:

- one segment, type **BINARY** (the answer's mask exactly as the NIfTI holds it: after the
  presence gate and the removal of specks and one-slice false alarms; the raw probabilities are
  not that answer, and BINARY is what every SEG reader supports). Frames without any mask pixel
  are left out; an empty mask (the finding is absent) keeps all frames, all zero.
- SegmentLabel: the prompt (cut to the 64 characters DICOM allows; the whole prompt is kept in
  SegmentDescription); SeriesDescription ``vlseg: <prompt>``.
- Segmented property category and type: two generic SNOMED CT pairs picked from the prompt's
  words (:func:`segment_codes`): a prompt naming a lesion (``LESION_WORDS``: lesion, tumour,
  mass, nodule, cyst, metastasis, ...) gets category "Morphologically Abnormal Structure"
  (SCT 49755003) and type "Lesion" (SCT 52988006); any other prompt is taken to name an organ:
  "Anatomical Structure" (SCT 91723000) and "Organ" (SCT 91772007). The prompt itself is the
  label; pass ``property_codes`` for more specific codes.
- SegmentAlgorithmType AUTOMATIC; the algorithm: name "vlseg", version ``vlseg.__version__``,
  family "Artificial Intelligence" (DCM 123110). New random UIDs for the series and instance.

Example::

    vol = read_volume("series/")                 # or a .zip of the series
    res = model.segment(vol, "the hepatic lesion")
    write_mask_dicom_seg("lesion.dcm", res.mask, vol, label="the hepatic lesion")

``vlseg predict --image SERIES --text T --out mask.dcm`` does the same.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import warnings
import zipfile
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np

from vlseg.atomic import atomic_write
from vlseg.data.volume_io import Volume, _mask_uint8
from vlseg.vocabulary import words

__all__ = [
    "LESION_WORDS",
    "SEG_NEEDS_SERIES",
    "read_source_datasets",
    "segment_codes",
    "write_mask_dicom_seg",
]

# Words that make a prompt name a lesion (singular and plural; matched as whole words).
LESION_WORDS = frozenset(
    """lesion lesions tumor tumors tumour tumours mass masses nodule nodules cyst cysts
    metastasis metastases neoplasm neoplasms cancer cancers carcinoma carcinomas
    lymphoma melanoma melanomas nevus nevi naevus naevi polyp polyps abscess abscesses
    hematoma haematoma infarct infarcts hemorrhage haemorrhage""".split()
)
SEG_NEEDS_SERIES = "DICOM SEG needs a DICOM series input"
_LO_MAX = 64  # characters in a DICOM LO value (SegmentLabel, SeriesDescription)
_ST_MAX = 1024  # characters in a DICOM ST value (SegmentDescription)
# what a SEG must reference (type 1 in the source images)
_TYPE1 = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
)
# patient and study attributes highdicom copies, present in the source though perhaps empty
_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


def _highdicom() -> Any:
    try:
        return importlib.import_module("highdicom")
    except ImportError as exc:
        raise ImportError(
            "writing DICOM SEG needs the 'highdicom' package; install it with "
            "`pip install vlseg[medical]`"
        ) from exc


def segment_codes(label: str) -> tuple[Any, Any]:
    """(segmented property category, segmented property type) for a prompt, as pydicom Codes:
    "Morphologically Abnormal Structure" / "Lesion" when a word of ``label`` is in
    ``LESION_WORDS``, else "Anatomical Structure" / "Organ" (all SNOMED CT)."""
    from pydicom.sr.codedict import codes

    if LESION_WORDS.intersection(words(label)):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    return codes.SCT.AnatomicalStructure, codes.SCT.Organ


def read_source_datasets(volume: Volume) -> list[Any]:
    """The headers (no pixel data) of a DICOM-series volume's files, in slice order, re-read
    from the folder or ``.zip`` it was read from (``volume.meta["files"]``).

    Raises:
        ValueError: the volume is not a DICOM series read from files, or its files changed
            (missing, or another SOPInstanceUID) since it was read.
    """
    import pydicom

    _check_series(volume)
    names = volume.meta.get("files")
    if not names or len(names) != volume.shape[0]:  # stored slices (files), not shown ones
        raise ValueError(
            f"{volume.source}: the volume does not record its DICOM files; pass "
            "source_datasets (the series' datasets)"
        )
    source = Path(volume.source)
    out = []
    try:
        if source.is_dir():
            for name in names:
                out.append(pydicom.dcmread(source / name, stop_before_pixels=True, force=True))
        else:
            with zipfile.ZipFile(source) as zf:
                for name in names:
                    raw = io.BytesIO(zf.read(name))
                    out.append(pydicom.dcmread(raw, stop_before_pixels=True, force=True))
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{volume.source}: cannot re-read the series' files for the DICOM SEG ({exc}); the "
            "folder or .zip changed since it was read"
        ) from exc
    _check_same_instances(out, volume)
    return out


def write_mask_dicom_seg(
    path: str | os.PathLike[str],
    mask_stored: np.ndarray,
    volume: Volume,
    *,
    label: str,
    source_datasets: Sequence[Any] | None = None,
    property_codes: tuple[Any, Any] | None = None,
) -> Path:
    """Save a mask on a DICOM series as a DICOM SEG file (one BINARY segment) that references
    the series' slices.

    Args:
        path: destination (conventionally ``.dcm``); written atomically.
        mask_stored: bool or 0/1 integers in ``volume.shape`` ``(S, Rows, Cols)``, slices in
            the volume's (anatomical) order, e.g. ``VolumeResult.mask``.
        volume: the DICOM series the mask belongs to, from :func:`read_volume`.
        label: the segment's name, e.g. the prompt; also picks the property codes.
        source_datasets: the series' pydicom datasets (pixel data not needed), in any order
            when the volume records its SOPInstanceUIDs, else in slice order; default: re-read
            from the folder or ``.zip`` the volume came from.
        property_codes: (category, type) codes (pydicom ``Code``) instead of
            :func:`segment_codes`.

    Returns:
        ``path``.

    Raises:
        ValueError: the volume is not a DICOM series, the mask is not binary or not in the
            volume's shape, the source datasets do not match the volume's slices, or they
            lack what a SEG needs to place its frames (FrameOfReferenceUID, slice positions
            and orientation, PixelSpacing; missing patient/study type 2 attributes are added
            empty instead).
        ImportError: highdicom is not installed.
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    from vlseg import __version__

    _check_series(volume)
    mask = _mask_uint8(np.asarray(mask_stored), volume.shape)
    if mask.size and int(mask.max()) > 1:
        raise ValueError(
            "a DICOM SEG of one segment needs a binary mask (bool or 0/1); got labels up to "
            f"{int(mask.max())}"
        )
    text = " ".join(str(label).split())
    if not text:
        raise ValueError("label must name the segment (e.g. the prompt)")
    if source_datasets is None:
        sources = read_source_datasets(volume)
    else:
        sources = _in_slice_order(list(source_datasets), volume)
    sources = _prepared(sources, volume, copy=source_datasets is not None)

    category, prop_type = property_codes or segment_codes(text)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="vlseg", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=_lo(text),
        segmented_property_category=category,
        segmented_property_type=prop_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    description.SegmentDescription = text[:_ST_MAX]
    series_number = _int_or_none(sources[0].get("SeriesNumber"))
    with warnings.catch_warnings():
        # highdicom warns about single-component PatientName values of the source (common in
        # anonymised data), which it copies as they are: nothing for the caller to fix here.
        warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING, category=UserWarning)
        try:
            seg = hd.seg.Segmentation(
                source_images=sources,
                pixel_array=mask.astype(bool),
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[description],
                series_instance_uid=hd.UID(),
                series_number=1000 + (series_number or 0),
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="vlseg",
                manufacturer_model_name="vlseg",
                software_versions=__version__,
                device_serial_number="0",
                series_description=_lo(f"vlseg: {text}"),
                content_description=_lo(f"vlseg: {text}"),
                omit_empty_frames=bool(mask.any()),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{volume.source}: highdicom cannot build a DICOM SEG on this series "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    path = Path(path)
    with atomic_write(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path


def _check_series(volume: Volume) -> None:
    if volume.meta.get("format") != "dicom-series":
        raise ValueError(
            f"{SEG_NEEDS_SERIES}; {volume.source} is not one (use write_mask_nifti, or "
            "--out mask.nii.gz on the command line)"
        )
    if len(volume.shape) != 3:
        raise ValueError(f"{volume.source}: a DICOM series volume must be (S, Rows, Cols)")


def _check_same_instances(sources: list[Any], volume: Volume) -> None:
    uids = volume.meta.get("sop_instance_uids")
    if not uids:
        return
    got = [str(ds.get("SOPInstanceUID", "") or "") for ds in sources]
    if got != list(uids):
        raise ValueError(
            f"{volume.source}: the series' files changed since the volume was read (other "
            "SOPInstanceUIDs); read the volume again"
        )


def _prepared(sources: list[Any], volume: Volume, *, copy: bool) -> list[Any]:
    """Check what a SEG must reference and fill what highdicom needs present but may be empty.

    Type 1 attributes (UIDs, the slice geometry) must be there. The patient and study module's
    type 2 attributes an anonymiser may have dropped are added empty ("unknown", as DICOM
    reads an empty type 2 value), a PatientSex other than M, F or O is emptied, and a missing
    SliceThickness is taken as the volume's slice spacing. ``copy``: change copies, never the
    caller's datasets.
    """
    rows, cols = volume.shape[1], volume.shape[2]
    out = []
    for ds in sources:
        missing = [kw for kw in _TYPE1 if not ds.get(kw)]
        if missing:
            raise ValueError(
                f"{volume.source}: the series' files lack {', '.join(missing)}, which a DICOM SEG "
                "needs to reference and place its frames; use a NIfTI mask (--out mask.nii.gz)"
            )
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise ValueError(
                f"{volume.source}: source slice {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns}, "
                f"the volume's slices {rows}x{cols}"
            )
        fill = {kw: "" for kw in _TYPE2 if kw not in ds}
        if str(ds.get("PatientSex", "") or "") not in ("", "M", "F", "O"):
            fill["PatientSex"] = ""
        gap = (volume.meta.get("slice_gaps_mm") or {}).get("median")  # between the files
        if not ds.get("SliceThickness") and gap:
            fill["SliceThickness"] = f"{gap:.6g}"
        if fill:
            ds = deepcopy(ds) if copy else ds
            for kw, value in fill.items():
                setattr(ds, kw, value)
        out.append(ds)
    return out


def _in_slice_order(sources: list[Any], volume: Volume) -> list[Any]:
    """``sources`` matched to the volume's slices by SOPInstanceUID when it records them, else
    taken as given (which must be slice order)."""
    if len(sources) != volume.shape[0]:
        raise ValueError(
            f"{volume.source}: {len(sources)} source datasets for a volume of {volume.shape[0]} "
            "slices; pass one dataset per slice"
        )
    uids = volume.meta.get("sop_instance_uids")
    if not uids or not all(uids):
        return sources
    by_uid = {str(ds.get("SOPInstanceUID", "")): ds for ds in sources}
    missing = [u for u in uids if u not in by_uid]
    if missing:
        raise ValueError(
            f"{volume.source}: {len(missing)} of the volume's slices have no source dataset "
            f"(e.g. SOPInstanceUID {missing[0]}); pass the datasets of the series read"
        )
    return [by_uid[u] for u in uids]


def _lo(text: str) -> str:
    """A DICOM LO value: no backslash (the value separator) or control characters, at most 64
    characters."""
    clean = re.sub(r"[\x00-\x1f\x7f]", " ", text).replace("\\", "/")
    return clean[:_LO_MAX].rstrip()


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
