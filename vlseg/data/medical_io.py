"""DICOM and NIfTI slices: raw values, default CT window and pixel spacing.

Used by :mod:`vlseg.data.io`; most callers want :func:`vlseg.data.io.load_image` instead.
pydicom and nibabel are imported only when such a file is read (``pip install vlseg[medical]``).

Orientation. DICOM pixels are shown as stored (rows top to bottom), which is how every viewer
shows them. NIfTI voxel order depends on the affine, so a slice is turned into the radiological
display convention: for an axial slice anterior is at the top and the patient's right is on the
image's left (as in a DICOM viewer), so "left kidney" means the same thing for both formats.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "SOFT_TISSUE_WINDOW",
    "SUPPORTED_FORMATS",
    "SliceInfo",
    "check_pixels",
    "dicom_size",
    "is_dicom",
    "is_nifti",
    "looks_like_hu",
    "nifti_size",
    "read_dicom",
    "read_nifti",
    "unreadable_error",
]

SUPPORTED_FORMATS = "PNG, JPEG, BMP, TIFF, DICOM (.dcm), NIfTI (.nii, .nii.gz)"
SOFT_TISSUE_WINDOW = (40.0, 400.0)  # (level, width) in Hounsfield units
_DICOM_SUFFIXES = (".dcm", ".dicom")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class SliceInfo:
    """What a reader learned about a slice besides its values."""

    spacing: tuple[float, float] | None  # mm per pixel (row, col)
    window: tuple[float, float] | None  # default (level, width); None means min-max rescale
    invert: bool  # MONOCHROME1: high values display dark
    dtype: str  # stored pixel dtype, e.g. "uint16"
    meta: dict[str, Any] = field(default_factory=dict)


def is_dicom(path: Path) -> bool:
    """True for ``.dcm``/``.dicom`` files and for any file with the ``DICM`` magic at byte 128."""
    if path.name.lower().endswith(_DICOM_SUFFIXES):
        return True
    if is_nifti(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def is_nifti(path: Path) -> bool:
    """True for ``.nii`` and ``.nii.gz`` files."""
    return path.name.lower().endswith(_NIFTI_SUFFIXES)


def looks_like_hu(values: np.ndarray) -> bool:
    """Heuristic: CT in Hounsfield units has air/lung (-1100..-500 HU) in more than 1% of pixels."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return False
    return float(np.mean((v >= -1100.0) & (v <= -500.0))) > 0.01


def check_pixels(height: int, width: int, max_pixels: int, name: str) -> None:
    """Raise ValueError when ``height * width`` exceeds ``max_pixels``."""
    if height * width > max_pixels:
        raise ValueError(
            f"{name}: image of {width}x{height} = {height * width:,} pixels exceeds the limit of "
            f"{max_pixels:,} pixels (max_pixels); downsample it or raise max_pixels if you trust "
            "the source"
        )


def unreadable_error(path: Path, exc: BaseException | str) -> ValueError:
    """The error for a file that cannot be decoded as an image."""
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return ValueError(
        f"{path} is not a readable image ({reason}). Supported formats: {SUPPORTED_FORMATS}."
    )


def _require(module: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"reading {what} files needs the '{module}' package; install it with "
            "`pip install vlseg[medical]`"
        ) from exc


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(np.atleast_1d(np.asarray(value, dtype=np.float64))[0])
    except (TypeError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------------------------
# DICOM


def _dcmread(path: Path, *, header_only: bool) -> Any:
    pydicom = _require("pydicom", "DICOM")
    from pydicom.errors import InvalidDicomError

    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=header_only)
        except InvalidDicomError:
            # Old files often lack the 128-byte preamble; accept them if they hold an image.
            ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise unreadable_error(path, exc) from exc
    if "Rows" not in ds or "Columns" not in ds:
        raise unreadable_error(path, "a DICOM file without image rows/columns")
    return ds


def dicom_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from the DICOM header."""
    ds = _dcmread(path, header_only=True)
    return int(ds.Rows), int(ds.Columns)


def read_dicom(
    path: Path, *, frame: int | None = None, max_pixels: int
) -> tuple[np.ndarray, SliceInfo]:
    """Read one DICOM frame.

    Args:
        path: the ``.dcm`` file.
        frame: frame of a multi-frame file (default the middle one); ignored for single frames.
        max_pixels: refuse frames larger than this, checked before decoding.

    Returns:
        ``values``: ``HxW`` float64 after RescaleSlope/RescaleIntercept (Hounsfield units for CT),
        or ``HxWx3`` for colour images; and a :class:`SliceInfo` whose ``window`` is the file's
        WindowCenter/WindowWidth, else soft tissue (40, 400) for CT, else None (min-max).
    """
    ds = _dcmread(path, header_only=False)
    rows, cols = int(ds.Rows), int(ds.Columns)
    check_pixels(rows, cols, max_pixels, str(path))
    if "PixelData" not in ds:
        raise unreadable_error(path, "a DICOM file without pixel data")
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts))
        raise ValueError(
            f"{path}: cannot decode the DICOM pixel data (transfer syntax {ts_name}: {exc}). "
            "Compressed DICOM needs a decoder plugin, e.g. "
            "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`."
        ) from exc
    n_frames = int(_first_float(ds.get("NumberOfFrames", 1)) or 1)
    samples = int(_first_float(ds.get("SamplesPerPixel", 1)) or 1)
    index = 0
    if n_frames > 1:
        index = n_frames // 2 if frame is None else int(frame)
        if not 0 <= index < n_frames:
            raise ValueError(
                f"{path}: frame {frame} out of range; the file has frames 0..{n_frames - 1}"
            )
        arr = arr[index]
    modality = str(ds.get("Modality", "") or "")
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    meta: dict[str, Any] = {
        "format": "dicom",
        "modality": modality,
        "photometric": photometric,
        "frame": index,
        "n_frames": n_frames,
    }
    spacing = _dicom_spacing(ds)
    if samples > 1:  # colour; pydicom already converted YBR to RGB
        return arr, SliceInfo(spacing, None, False, str(arr.dtype), meta)

    slope = _first_float(ds.get("RescaleSlope")) or 1.0
    intercept = _first_float(ds.get("RescaleIntercept")) or 0.0
    values = arr.astype(np.float64) * slope + intercept
    meta["rescale"] = (slope, intercept)
    level = _first_float(ds.get("WindowCenter"))
    width = _first_float(ds.get("WindowWidth"))
    if level is not None and width is not None and width > 0:
        window: tuple[float, float] | None = (level, width)
        meta["window_source"] = "file"
    elif modality.upper() == "CT" or looks_like_hu(values):
        window = SOFT_TISSUE_WINDOW
        meta["window_source"] = "default soft tissue"
    else:
        window = None
        meta["window_source"] = "min-max"
    return values, SliceInfo(spacing, window, photometric == "MONOCHROME1", str(arr.dtype), meta)


def _dicom_spacing(ds: Any) -> tuple[float, float] | None:
    # PixelSpacing is (row spacing, column spacing) in mm; ImagerPixelSpacing (projection
    # radiography) is measured at the detector, the best available for X-ray.
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is None:
            continue
        try:
            sy, sx = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if sy > 0 and sx > 0 and math.isfinite(sy) and math.isfinite(sx):
            return sy, sx
    return None


# --------------------------------------------------------------------------------------------
# NIfTI


@dataclass(frozen=True)
class _Plane:
    through: int  # voxel axis cut by the slice
    rows: int  # voxel axis shown top to bottom
    cols: int  # voxel axis shown left to right
    flip_rows: bool
    flip_cols: bool
    n_slices: int
    shape: tuple[int, int, int]


def _nifti_load(path: Path) -> Any:
    nib = _require("nibabel", "NIfTI")
    try:
        return nib.load(str(path))
    except MemoryError:
        raise
    except Exception as exc:
        raise unreadable_error(path, exc) from exc


def _nifti_plane(img: Any, path: Path) -> _Plane:
    from nibabel.orientations import io_orientation

    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 3 and math.prod(shape[3:]) != 1:
        raise ValueError(
            f"{path}: a {len(shape)}-D series of shape {shape}; vlseg reads 2-D images and slices "
            "of 3-D volumes, so extract one volume first"
        )
    if len(shape) < 2:
        raise unreadable_error(path, f"a NIfTI file of shape {shape}")
    shape3 = (shape + (1, 1))[:3]
    ornt = io_orientation(img.affine)  # row i: (world axis R=0/A=1/S=2, +1/-1) of voxel axis i
    world = [int(ornt[i, 0]) for i in range(3)]
    if len(shape) == 2 or shape3[2] == 1:
        through = 2  # a 2-D image: the singleton axis, whatever the affine says
    else:
        through = world.index(2)
    a, b = (ax for ax in range(3) if ax != through)
    # Rows follow the higher world axis (A for axial, S for coronal/sagittal); each axis is shown
    # from its max end (anterior/superior at top, patient right or anterior on the left).
    rows, cols = (b, a) if world[b] > world[a] else (a, b)
    return _Plane(
        through=through,
        rows=rows,
        cols=cols,
        flip_rows=bool(ornt[rows, 1] > 0),
        flip_cols=bool(ornt[cols, 1] > 0),
        n_slices=shape3[through],
        shape=shape3,
    )


def nifti_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of the displayed slice, from the NIfTI header."""
    img = _nifti_load(path)
    plane = _nifti_plane(img, path)
    return plane.shape[plane.rows], plane.shape[plane.cols]


def read_nifti(
    path: Path, *, slice_index: int | None = None, max_pixels: int
) -> tuple[np.ndarray, SliceInfo]:
    """Read one 2-D slice of a NIfTI image in display orientation.

    Args:
        path: the ``.nii`` or ``.nii.gz`` file (2-D, 3-D, or 4-D with one volume).
        slice_index: index along the voxel axis closest to superior-inferior, in stored order;
            default the middle slice. Ignored for 2-D images.
        max_pixels: refuse slices larger than this, checked from the header.

    Returns:
        ``values``: ``HxW`` array after the header's scl_slope/scl_inter; and a
        :class:`SliceInfo` with spacing ``(row, col)`` from the header zooms and a default window
        from cal_min/cal_max, else soft tissue when the values look like Hounsfield units.
    """
    img = _nifti_load(path)
    plane = _nifti_plane(img, path)
    check_pixels(plane.shape[plane.rows], plane.shape[plane.cols], max_pixels, str(path))
    index = plane.n_slices // 2 if slice_index is None else int(slice_index)
    if not 0 <= index < plane.n_slices:
        raise ValueError(
            f"{path}: slice_index {slice_index} out of range; the volume has slices "
            f"0..{plane.n_slices - 1}"
        )
    ndim = len(img.shape)
    key: list[Any] = [slice(None)] * min(ndim, 3)
    if ndim >= 3:
        key[plane.through] = index
    key += [0] * (ndim - 3)
    try:
        values = np.asarray(img.dataobj[tuple(key)])
    except MemoryError:
        raise
    except Exception as exc:
        raise unreadable_error(path, exc) from exc
    # After dropping the through axis the remaining axes keep their order.
    in_plane = [ax for ax in range(3) if ax != plane.through]
    if in_plane.index(plane.rows) == 1:
        values = values.T
    if plane.flip_rows:
        values = values[::-1]
    if plane.flip_cols:
        values = values[:, ::-1]
    values = np.ascontiguousarray(values)

    zooms = tuple(float(z) for z in img.header.get_zooms()) + (1.0, 1.0)
    sy, sx = zooms[plane.rows], zooms[plane.cols]
    spacing = (sy, sx) if sy > 0 and sx > 0 else None
    meta: dict[str, Any] = {
        "format": "nifti",
        "slice_index": index,
        "n_slices": plane.n_slices,
        "slice_axis": plane.through,
        "orientation": "radiological",
    }
    header = img.header
    cal_min, cal_max = _first_float(header.get("cal_min")), _first_float(header.get("cal_max"))
    window: tuple[float, float] | None = None
    if cal_min is not None and cal_max is not None and cal_max > cal_min:
        window = ((cal_min + cal_max) / 2.0, cal_max - cal_min)
        meta["window_source"] = "file"
    elif looks_like_hu(values):
        window = SOFT_TISSUE_WINDOW
        meta["window_source"] = "default soft tissue"
    else:
        meta["window_source"] = "min-max"
    dtype = str(np.dtype(img.get_data_dtype()))
    return values, SliceInfo(spacing, window, False, dtype, meta)
