"""DICOM and NIfTI slices: raw values, the file's own display rendering, and pixel spacing.

Used by :mod:`vlseg.data.io`; most callers want :func:`vlseg.data.io.load_image` instead.
pydicom and nibabel are imported only when such a file is read (``pip install vlseg[medical]``).

Intensities are left to the library that owns the format: pydicom's ``apply_modality_lut``
(Rescale Slope/Intercept or a Modality LUT Sequence) gives the stored values in physical units
(Hounsfield units for CT), and its ``apply_voi_lut`` renders the file's own VOI module (a VOI LUT
Sequence, or Window Center/Width with any VOI LUT Function: LINEAR, LINEAR_EXACT, SIGMOID). That
rendering is the file's *display* view; which window feeds a model is decided by the caller
(:func:`vlseg.data.io.load_image`'s ``window``).

Orientation. DICOM pixels are shown as stored (rows top to bottom), which is how every viewer
shows them. NIfTI voxel order depends on the affine, so a slice is turned into the radiological
display convention: for an axial slice anterior is at the top and the patient's right is on the
image's left (as in a DICOM viewer), so "left kidney" means the same thing for both formats.
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "SOFT_TISSUE_WINDOW",
    "SUPPORTED_FORMATS",
    "SliceInfo",
    "apply_window",
    "check_pixels",
    "check_window",
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
    window: tuple[float, float] | None  # fallback (level, width) when the file names no window:
    # soft tissue for CT-like values, None for a min-max rescale
    invert: bool  # MONOCHROME1: high values display dark
    dtype: str  # stored pixel dtype, e.g. "uint16"
    meta: dict[str, Any] = field(default_factory=dict)  # also "file_window": the file's (level,
    # width) or None, and "voi": how ``view`` was made ("window", "VOI LUT", None)
    view: np.ndarray | None = None  # HxW uint8: the slice as the file says to display it (its VOI
    # LUT or window, MONOCHROME1 applied); None when the file names no window
    ct: bool = False  # values are CT Hounsfield units, so a model's CT window applies to them


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


def check_window(window: tuple[float, float]) -> tuple[float, float]:
    """``(level, width)`` as two finite floats with ``width > 0``, else ValueError."""
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be (level, width), got {window!r}") from None
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ValueError(f"window must be finite with width > 0, got (level, width)={window!r}")
    return level, width


def apply_window(values: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map values linearly from ``[level - width/2, level + width/2]`` to uint8, clipping outside.

    Args:
        values: any real array, e.g. Hounsfield units.
        level: window centre, e.g. 40 for soft tissue.
        width: window width (> 0), e.g. 400 for soft tissue.

    Returns:
        uint8 array of the same shape.
    """
    level, width = check_window((level, width))
    lo = level - width / 2.0
    scaled = (np.asarray(values, dtype=np.float64) - lo) / width
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


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
        ``values``: ``HxW`` float64 after the modality LUT (pydicom ``apply_modality_lut``:
        Hounsfield units for CT), or ``HxWx3`` for colour images; and a :class:`SliceInfo` whose
        ``view`` is the file's VOI rendering (pydicom ``apply_voi_lut``: VOI LUT Sequence, else
        Window Center/Width with its VOI LUT Function), ``window`` the fallback soft tissue
        (40, 400) for CT-like values (else None, min-max), and ``ct`` True for modality CT (or no
        modality and values that look like Hounsfield units).
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
        if frame is None:  # say so: the answer is about one frame of the file
            warnings.warn(
                f"{path}: a multi-frame DICOM file ({n_frames} frames); read as the 2-D image "
                f"of its middle frame {index} (vlseg reads volumes from series of single-frame "
                "files or NIfTI; export the frames as one of those to answer in 3-D)",
                stacklevel=2,
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

    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if "ModalityLUTSequence" in ds:
        meta["modality_lut"] = "sequence"
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        meta["rescale"] = (float(ds.RescaleSlope), float(ds.RescaleIntercept))
    invert = photometric == "MONOCHROME1"
    view, voi = _dicom_voi_view(ds, values, invert, path)
    level, width = _first_float(ds.get("WindowCenter")), _first_float(ds.get("WindowWidth"))
    meta["file_window"] = (level, width) if voi == "window" else None
    meta["voi"] = voi
    hu_like = looks_like_hu(values)
    ct = modality.upper() == "CT" or (not modality and hu_like)
    fallback = SOFT_TISSUE_WINDOW if modality.upper() == "CT" or hu_like else None
    return values, SliceInfo(spacing, fallback, invert, str(arr.dtype), meta, view, ct)


def _dicom_voi_view(
    ds: Any, values: np.ndarray, invert: bool, path: Path
) -> tuple[np.ndarray | None, str | None]:
    """The file's VOI rendering as HxW uint8 and what made it ("VOI LUT", "window"), or
    ``(None, None)`` when the file has no usable VOI module."""
    from pydicom.pixels import apply_voi_lut

    lut_items = ds.get("VOILUTSequence") or []
    has_lut = bool(lut_items) and all(k in lut_items[0] for k in ("LUTDescriptor", "LUTData"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return None, None
    try:
        if has_lut:  # pydicom prefers the LUT when both are present, as PS3.3 C.11.2 allows
            descriptor = lut_items[0].LUTDescriptor  # (entries, first input value, bits)
            n, first = int(descriptor[0]) or 2**16, int(descriptor[1])
            # Clip to the LUT's inputs first: pydicom 3.0 indexes through an array of the entry
            # dtype, so an input past 255 would wrap around an 8-bit LUT instead of saturating.
            # (LUT inputs are integers; the modality output is float64 only by our cast.)
            index = np.clip(np.rint(values), first, first + n - 1).astype(np.int64)
            out = apply_voi_lut(index, ds)
            # Scale by the range the LUT really spans: many files declare 16 bits per entry for
            # 12-bit LUT data, which would otherwise show almost black.
            entries = apply_voi_lut(np.arange(first, first + n, dtype=np.int64), ds)
            lo, hi, voi = float(entries.min()), float(entries.max()), "VOI LUT"
        else:
            out = apply_voi_lut(values, ds)
            # The output range (pydicom maps below/above the window to the stored bit range):
            # read it back by pushing the two extremes through the same function.
            with np.errstate(over="ignore"):
                lo, hi = apply_voi_lut(np.array([-1e300, 1e300]), ds).tolist()
            voi = "window"
    except MemoryError:
        raise
    except Exception as exc:  # a malformed VOI module: fall back to the default window
        warnings.warn(f"{path}: ignoring the file's VOI window/LUT ({exc})", stacklevel=3)
        return None, None
    if not hi > lo:
        return None, None
    gray = np.rint(np.clip((out.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255.0)
    gray = gray.astype(np.uint8)
    return (255 - gray if invert else gray), voi


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
        :class:`SliceInfo` with spacing ``(row, col)`` from the header zooms, ``view`` windowed
        by the header's cal_min/cal_max (when set), and the fallback window soft tissue when the
        values look like Hounsfield units.
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
    view = None
    meta["file_window"] = meta["voi"] = None
    if cal_min is not None and cal_max is not None and cal_max > cal_min:
        meta["file_window"] = ((cal_min + cal_max) / 2.0, cal_max - cal_min)
        meta["voi"] = "window"
        view = apply_window(values, *meta["file_window"])
    fallback = SOFT_TISSUE_WINDOW if looks_like_hu(values) else None
    dtype = str(np.dtype(img.get_data_dtype()))
    # NIfTI names no modality; a caller passes a CT window only for a CT model, so it applies.
    return values, SliceInfo(spacing, fallback, False, dtype, meta, view, ct=True)
