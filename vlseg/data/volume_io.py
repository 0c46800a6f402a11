"""3-D volumes: a NIfTI file, a DICOM series (a folder or a ``.zip``) or a numpy array read into
one :class:`Volume`, and masks written back as NIfTI that overlay the source in any viewer.

Most callers want :meth:`vlseg.Segmenter.segment` on a volume; this module is what it reads with.

Two views of the same voxels:

- ``Volume.values`` is what the 2-D model sees, ``S x H x W`` float32: the slices in the file's
  order along its slice axis, each slice in display orientation. For NIfTI that is exactly the
  slice :func:`vlseg.data.medical_io.read_nifti` shows (radiological convention: for an axial
  slice anterior at the top and the patient's right on the image's left), so ``values[k]`` equals
  ``read_nifti(path, slice_index=k)``. DICOM slices are shown as stored (rows top to bottom), and
  a series is put in anatomical order (ascending position along the slice normal). A numpy array
  is taken as already ``S x H x W`` in display order.
- the *stored* array: the file's own array shape and voxel order (``Volume.shape``). Masks and
  probability maps go back to it with :meth:`Volume.to_stored` (an exact permutation/flip, no
  interpolation), and :func:`write_mask_nifti` writes them with the volume's geometry (for a
  DICOM series also :func:`vlseg.data.dicom_seg.write_mask_dicom_seg`: a DICOM SEG).

Geometry. ``Volume.affine`` maps indices of the stored array to world millimetres in the NIfTI
convention (RAS+: x to the patient's left->Right, y posterior->Anterior, z inferior->Superior):

- NIfTI: the file's own affine (sform, else qform), for the file's ``(i, j, k)`` axes.
- DICOM series: the stored array is ``(S, Rows, Cols)`` (slices in anatomical order), and the
  affine maps ``(slice, row, col)`` to RAS. DICOM patient coordinates are LPS, so the x and y
  rows of the LPS affine are negated. :func:`write_mask_nifti` writes such masks transposed to
  ``(Cols, Rows, S)``, the usual NIfTI layout for a DICOM series, with the affine for *those*
  indices ``(i=col, j=row, k=slice)``.
- numpy: ``diag(slice_mm, row_mm, col_mm, 1)`` for the array's own ``(s, r, c)`` axes (the
  identity when the spacing is unknown): an arbitrary frame, no anatomical direction implied.

Intensities: NIfTI values after scl_slope/scl_inter; DICOM values after pydicom's
``apply_modality_lut`` (Hounsfield units for CT); arrays as given.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlseg.atomic import atomic_write
from vlseg.data.medical_io import (
    SOFT_TISSUE_WINDOW,
    _first_float,
    _nifti_load,
    _nifti_plane,
    _require,
    apply_window,
    check_window,
    is_dicom,
    is_nifti,
    looks_like_hu,
    unreadable_error,
)

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "StoredLayout",
    "Volume",
    "is_volume_source",
    "read_volume",
    "write_mask_nifti",
]

DEFAULT_MAX_VOXELS = 400_000_000
_IRREGULAR_GAP_RATIO = 1.1  # max gap / min gap above which slice spacing counts as irregular
_POSITION_TOL_MM = 1e-3  # slice positions closer than this are the same position
_ORIENTATION_TOL = 1e-3  # direction cosines that differ by less are the same orientation
# Tags that tell the volumes of a 4-D series (time points, echoes, phases) apart.
_SPLIT_TAGS = (
    "TemporalPositionIdentifier",
    "AcquisitionNumber",
    "EchoNumbers",
    "TriggerTime",
    "EchoTime",
    "DiffusionBValue",
)
_TWO_D_HINT = "for a 2-D image use vlseg.data.io.load_image (or model.segment on the image)"


# --------------------------------------------------------------------------------------------
# the Volume


@dataclass(frozen=True)
class StoredLayout:
    """How ``Volume.values`` is cut from the stored array.

    ``values = transpose(stored.reshape(shape3), axes)``, then rows flipped when ``flip_rows``
    and columns when ``flip_cols``; ``shape`` is the stored array's full shape (``shape3`` is it
    without trailing singleton axes beyond the third).
    """

    axes: tuple[int, int, int] = (0, 1, 2)  # stored axis shown as (slice, row, col)
    flip_rows: bool = False
    flip_cols: bool = False
    shape3: tuple[int, int, int] | None = None  # None: values.shape (identity layout)


@dataclass(eq=False)
class Volume:
    """A 3-D image ready for a 2-D model, slice by slice, with its file's geometry.

    Attributes:
        values: ``S x H x W`` float32; slice ``k`` is the file's ``k``-th slice along its slice
            axis (anatomical order for a DICOM series), in display orientation.
        spacing: ``(slice_mm, row_mm, col_mm)`` of ``values``; None when unknown.
        shape: the stored array's shape, what :meth:`to_stored` returns. NIfTI: the data array's
            shape, e.g. ``(X, Y, Z)``; a 4-D file holding one volume keeps its trailing 1, so a
            mask is written with the same dimensions as its source. DICOM series:
            ``(S, Rows, Cols)`` in anatomical order. numpy: the array's own shape.
        affine: 4x4 voxel-to-world matrix (RAS+ millimetres, the NIfTI convention) for indices of
            the stored array (see the module docstring for each format).
        source: where the volume came from, for messages.
        meta: ``format`` ("nifti", "dicom-series", "array"); ``ct`` (values are Hounsfield
            units, so a model's CT window applies: DICOM modality CT, every NIfTI as for 2-D
            NIfTI slices, arrays that look like HU); ``file_window`` (the file's own (level,
            width) or None); ``n_files``; ``slice_axis`` (the stored axis the slices cut);
            ``orientation`` (how slices are shown); ``axcodes`` (the stored axes' RAS codes);
            for DICOM also ``slice_order``, ``slice_gaps_mm``, ``irregular_spacing``,
            ``invert`` (MONOCHROME1), ``series_uid``, ``modality``, ``files`` (slice ``k``'s
            file: its path below the folder, or its member name in the ``.zip``, with
            ``source`` the folder or ``.zip``), ``sop_instance_uids`` (slice ``k``'s
            SOPInstanceUID, "" when the file has none), ...
        layout: how ``values`` is cut from the stored array (used by to_stored/from_stored).
        header: the source NIfTI header (copied into written masks), else None.
    """

    values: np.ndarray
    spacing: tuple[float, float, float] | None
    shape: tuple[int, ...]
    affine: np.ndarray
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    layout: StoredLayout = field(default_factory=StoredLayout, repr=False)
    header: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim != 3:
            raise ValueError(f"Volume.values must be S x H x W, got shape {values.shape}")
        if values.dtype != np.float32:
            values = values.astype(np.float32)
        self.values = values
        self.shape = tuple(int(s) for s in self.shape)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got shape {self.affine.shape}")
        if math.prod(self.shape) != values.size:
            raise ValueError(
                f"Volume.shape {self.shape} does not hold the {values.size} voxels of values "
                f"{values.shape}"
            )

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __repr__(self) -> str:
        sp = "unknown" if self.spacing is None else "x".join(f"{s:g}" for s in self.spacing)
        return (
            f"Volume({self.meta.get('format', '?')} {self.source!r}, slices x rows x cols "
            f"{'x'.join(map(str, self.values.shape))}, spacing {sp} mm, "
            f"ct={bool(self.meta.get('ct'))})"
        )

    @property
    def first_slice_end(self) -> str | None:
        """Which end of the body slice 0 is at, "inferior" or "superior", from the affine (None
        for an array or a file whose slices are not ordered along superior-inferior)."""
        if self.meta.get("format") in (None, "array"):
            return None
        z = float(self.affine[2, self.layout.axes[0]])
        axis = np.abs(self.affine[:3, self.layout.axes[0]])
        if abs(z) < 1e-6 or int(np.argmax(axis)) != 2:
            return None
        return "inferior" if z > 0 else "superior"

    @property
    def resliced(self) -> str | None:
        """The plane a DICOM series was stored in ("sagittal", "coronal", ...) when it is shown
        resliced to axial slices, else None."""
        if self.meta.get("format") == "dicom-series" and self.layout.shape3 is not None:
            return str(self.meta.get("plane") or "another")
        return None

    # ---- stored <-> display ----------------------------------------------------------------

    def _shape3(self) -> tuple[int, int, int]:
        if self.layout.shape3 is not None:
            return self.layout.shape3
        s, h, w = self.values.shape
        return (s, h, w)

    def to_stored(self, stack: np.ndarray) -> np.ndarray:
        """``S x H x W`` (display order, like ``values``) -> the stored array's shape and voxel
        order (the exact inverse of reading; any dtype)."""
        stack = np.asarray(stack)
        if stack.shape != self.values.shape:
            raise ValueError(
                f"expected an array shaped like Volume.values {self.values.shape}, got "
                f"{stack.shape}"
            )
        lay = self.layout
        if lay.flip_rows:
            stack = stack[:, ::-1]
        if lay.flip_cols:
            stack = stack[:, :, ::-1]
        stored = np.transpose(stack, np.argsort(lay.axes))
        return np.ascontiguousarray(stored).reshape(self.shape)

    def from_stored(self, arr: np.ndarray) -> np.ndarray:
        """The stored array's shape and voxel order -> ``S x H x W`` display order."""
        arr = np.asarray(arr)
        if arr.shape != self.shape:
            raise ValueError(f"expected an array of the stored shape {self.shape}, got {arr.shape}")
        lay = self.layout
        out = np.transpose(arr.reshape(self._shape3()), lay.axes)
        if lay.flip_rows:
            out = out[:, ::-1]
        if lay.flip_cols:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)

    # ---- 8-bit renderings ------------------------------------------------------------------

    def to_uint8(self, window: tuple[float, float] | None) -> np.ndarray:
        """``S x H x W`` uint8 model input.

        ``window`` ``(level, width)`` is applied when ``meta["ct"]`` (values in Hounsfield
        units); otherwise, or with ``window=None``, one min-max rescale over the whole volume
        (not per slice, so slices stay comparable), inverted for MONOCHROME1 DICOM other than
        CT (its low values are the bright ones, as the 2-D reader shows a single file; CT
        values are Hounsfield units, brighter where denser, whatever the file's display). A
        constant volume gives zeros; non-finite values map to 0.
        """
        if window is not None and self.meta.get("ct"):
            level, width = check_window(window)
            return self._per_slice(lambda v: apply_window(v, level, width))
        gray = self._min_max()
        if self.meta.get("invert") and not self.meta.get("ct") and gray.any():  # HU: never;
            np.subtract(255, gray, out=gray)  # a constant volume stays zeros
        return gray

    def display_uint8(self) -> np.ndarray:
        """``S x H x W`` uint8 for people: the file's own window when it names one, else
        :meth:`to_uint8` with soft tissue (40, 400) for CT and min-max otherwise; MONOCHROME1
        DICOM is inverted, as a viewer shows it."""
        file_window = self.meta.get("file_window")
        if file_window is not None:
            level, width = check_window(file_window)
            gray = self._per_slice(lambda v: apply_window(v, level, width))
        else:
            ct = bool(self.meta.get("ct"))
            gray = self.to_uint8(SOFT_TISSUE_WINDOW if ct else None)
            if not ct:
                return gray  # to_uint8 inverted MONOCHROME1 already
        if self.meta.get("invert"):
            gray = 255 - gray
        return gray

    def _per_slice(self, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        out = np.empty(self.values.shape, dtype=np.uint8)
        for k in range(len(self)):  # one slice at a time: no float64 copy of the whole volume
            out[k] = fn(self.values[k])
        return out

    def _min_max(self) -> np.ndarray:
        lo, hi = math.inf, -math.inf
        for sl in self.values:
            finite = sl[np.isfinite(sl)]
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        if not hi > lo:
            return np.zeros(self.values.shape, dtype=np.uint8)

        def scale(v: np.ndarray) -> np.ndarray:
            v = v.astype(np.float64)
            finite = np.isfinite(v)
            out = np.where(finite, (np.where(finite, v, lo) - lo) / (hi - lo), 0.0)
            return np.rint(out * 255.0).astype(np.uint8)

        return self._per_slice(scale)


# --------------------------------------------------------------------------------------------
# entry points


def read_volume(
    source: str | os.PathLike[str] | np.ndarray | Volume,
    *,
    spacing: tuple[float, float, float] | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Read a 3-D volume.

    Args:
        source: a NIfTI file (``.nii``/``.nii.gz``: 3-D, or 4-D holding one volume); a folder
            holding one DICOM series (searched recursively); a ``.zip`` of one DICOM series
            (read in memory); a 3-D numpy array ``S x H x W`` already in display order, slice 0
            first; or a :class:`Volume` (returned unchanged).
        spacing: ``(slice_mm, row_mm, col_mm)`` for an array (None: unknown). For a file it
            overrides the spacing read from the header (``meta["spacing_source"]`` says so);
            the affine is left as the file has it.
        max_voxels: refuse volumes with more voxels than this, checked from the headers before
            any pixel data is read.

    Raises:
        ValueError: 2-D input, a 4-D NIfTI with several volumes, or a DICOM folder that is not
            exactly one well-formed series (the message names the problem and the fix).
        FileNotFoundError: the path does not exist.
    """
    if isinstance(source, Volume):
        return source
    if spacing is not None:
        spacing = _check_spacing(spacing)
    if isinstance(source, np.ndarray):
        return _read_array(source, spacing, max_voxels)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "read_volume expects a path (NIfTI file, DICOM folder or .zip), a 3-D numpy array "
            f"or a Volume, got {type(source).__name__}"
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        with _FolderMembers(path) as members:
            vol = _read_dicom_series(members, str(path), max_voxels)
    elif path.name.lower().endswith(".zip"):
        with _ZipMembers(path, max_voxels) as members:
            vol = _read_dicom_series(members, str(path), max_voxels)
    elif is_nifti(path):
        vol = _read_nifti_volume(path, max_voxels)
    elif is_dicom(path):
        raise _single_dicom_error(path)
    else:
        raise ValueError(
            f"{path} is not a volume (expected a NIfTI file, a DICOM series folder or .zip); "
            + _TWO_D_HINT
        )
    if spacing is not None:
        vol.spacing = spacing
        vol.meta["spacing_source"] = "argument"
    return vol


def is_volume_source(source: Any) -> bool:
    """Whether ``source`` should be read with :func:`read_volume` rather than as a 2-D image.

    True for a :class:`Volume`, a folder, a ``.zip``, a NIfTI file whose slice axis has more
    than one slice (header only), and a 3-D numpy array whose last axis is not 1, 3 or 4 (those
    are ``H x W x C`` images). Reads no pixel data.
    """
    if isinstance(source, Volume):
        return True
    if isinstance(source, np.ndarray):
        return source.ndim == 3 and source.shape[-1] not in (1, 3, 4)
    if not isinstance(source, (str, os.PathLike)):
        return False
    path = Path(source).expanduser()
    if path.is_dir():
        return True
    if not path.is_file():
        return False
    if path.name.lower().endswith(".zip"):
        return True
    if is_nifti(path):
        try:
            img = _nifti_load(path)
            if len(img.shape) < 3:
                return False
            return _nifti_plane(img, path).n_slices > 1
        except (ValueError, ImportError):
            return False
    return False


def write_mask_nifti(path: str | os.PathLike[str], mask_stored: np.ndarray, volume: Volume) -> Path:
    """Save a mask in ``volume.shape`` (bool, or integer labels 0..255) as a uint8 NIfTI file
    that overlays the source volume in a viewer (ITK-SNAP, 3D Slicer, ...).

    - NIfTI source: the same array shape and affine; the source header is copied (qform/sform
      and their codes, zooms, units), with the data type set to uint8, no scaling and no
      display range.
    - DICOM series: the ``(S, Rows, Cols)`` mask is written transposed to ``(Cols, Rows, S)``
      with the affine for those indices: voxel ``(i, j, k)`` maps to the RAS position of pixel
      (row ``j``, column ``i``) of slice ``k`` (slices in anatomical order); qform and sform
      codes 1 (scanner).
    - numpy source: the array's own axes ``(s, r, c)`` with ``diag(slice_mm, row_mm, col_mm)``
      (identity when the spacing is unknown).

    Args:
        path: destination ending in ``.nii`` or ``.nii.gz``; written atomically.
        mask_stored: the mask in the stored shape, e.g. ``volume.to_stored(mask)``.
        volume: the volume the mask belongs to.

    Returns:
        ``path``.
    """
    nib = _require("nibabel", "NIfTI")
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: a NIfTI mask path must end in .nii or .nii.gz")
    mask = _mask_uint8(np.asarray(mask_stored), volume.shape)
    fmt = volume.meta.get("format")
    if fmt == "dicom-series":
        data = np.ascontiguousarray(np.transpose(mask, (2, 1, 0)))
        affine = volume.affine[:, [2, 1, 0, 3]]
        img = nib.Nifti1Image(data, affine)
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
    elif fmt == "nifti" and volume.header is not None:
        header = volume.header.copy()
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        # The header's own best affine, so nibabel keeps both qform and sform as they were.
        img = cls(mask, header.get_best_affine(), header=header)
        img.header["cal_min"] = img.header["cal_max"] = 0
        img.header.set_intent("none")
    else:
        img = nib.Nifti1Image(mask, volume.affine)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = b"vlseg mask"
    with atomic_write(path) as tmp:  # the temporary keeps the .nii/.nii.gz ending
        nib.save(img, str(tmp))
    return path


def _mask_uint8(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.shape != tuple(shape):
        raise ValueError(
            f"mask shape {mask.shape} differs from the volume's stored shape {tuple(shape)}; "
            "pass volume.to_stored(mask) for an S x H x W mask"
        )
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if mask.dtype.kind in "iu":
        if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 255):
            raise ValueError("an integer mask must hold labels in 0..255")
        return mask.astype(np.uint8)
    raise ValueError(
        f"a mask must be bool or integer labels, got {mask.dtype}; threshold probabilities first"
    )


def _check_spacing(spacing: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be (slice_mm, row_mm, col_mm), got {spacing!r}") from None
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"spacing must be three positive finite numbers (slice_mm, row_mm, col_mm), got "
            f"{spacing!r}"
        )
    return values[0], values[1], values[2]


def _check_voxels(shape: tuple[int, ...], max_voxels: int, name: str) -> None:
    n = math.prod(shape)
    if n > max_voxels:
        raise ValueError(
            f"{name}: volume of {'x'.join(map(str, shape))} = {n:,} voxels exceeds the limit of "
            f"{max_voxels:,} voxels (max_voxels); crop or downsample it, or raise max_voxels if "
            "you trust the source"
        )


def _axcodes(affine: np.ndarray) -> str:
    from nibabel.orientations import aff2axcodes

    try:
        return "".join(str(c) for c in aff2axcodes(affine))
    except Exception:  # a degenerate affine
        return "???"


# --------------------------------------------------------------------------------------------
# numpy


def _read_array(
    arr: np.ndarray, spacing: tuple[float, float, float] | None, max_voxels: int
) -> Volume:
    name = f"numpy array ({arr.dtype}, shape {arr.shape})"
    if arr.ndim == 2:
        raise ValueError(f"{name} is 2-D, not a volume; " + _TWO_D_HINT)
    if arr.ndim != 3:
        raise ValueError(f"{name}: a volume must be a 3-D array S x H x W")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected bool, integer or float values")
    if 0 in arr.shape:
        raise ValueError(f"{name}: the volume is empty")
    _check_voxels(arr.shape, max_voxels, name)
    if spacing is None and arr.shape[-1] in (3, 4):
        warnings.warn(
            f"{name} looks like an H x W x C colour image; it is read as a volume of "
            f"{arr.shape[0]} slices of {arr.shape[1]}x{arr.shape[2]}",
            stacklevel=3,
        )
    if spacing is None and arr.shape[0] in (3, 4) and arr.dtype == np.uint8:
        warnings.warn(
            f"{name} is read as a volume of {arr.shape[0]} slices; if it is a channels-first "
            "colour image, pass np.moveaxis(image, 0, -1) (H x W x C) instead",
            stacklevel=3,
        )
    values = np.ascontiguousarray(arr, dtype=np.float32)
    affine = np.diag([*(spacing or (1.0, 1.0, 1.0)), 1.0])
    meta = {
        "format": "array",
        "ct": _looks_like_hu_sampled(values),
        "file_window": None,
        "n_files": 0,
        "slice_axis": 0,
        "orientation": "as given (S x H x W, display order)",
        "dtype": str(arr.dtype),
    }
    return Volume(values, spacing, tuple(arr.shape), affine, name, meta)


def _looks_like_hu_sampled(values: np.ndarray, limit: int = 4_000_000) -> bool:
    flat = values.reshape(-1)
    step = max(1, flat.size // limit)
    return looks_like_hu(flat[::step])


# --------------------------------------------------------------------------------------------
# NIfTI


def _read_nifti_volume(path: Path, max_voxels: int) -> Volume:
    img = _nifti_load(path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3:
        raise ValueError(
            f"{path}: a 2-D NIfTI image of shape {shape}, not a volume; " + _TWO_D_HINT
        )
    if len(shape) > 3 and math.prod(shape[3:]) != 1:
        n = math.prod(shape[3:])
        raise ValueError(
            f"{path}: a {len(shape)}-D NIfTI of shape {shape} holds {n} volumes; read_volume "
            "reads one 3-D volume. Extract one first, e.g. with nibabel "
            "`nib.save(img.slicer[..., t], 'vol_t.nii.gz')` or `fslroi in out t 1`"
        )
    _check_voxels(shape, max_voxels, str(path))
    plane = _nifti_plane(img, path)
    axes = (plane.through, plane.rows, plane.cols)
    dataobj = img.dataobj
    try:
        if hasattr(dataobj, "get_unscaled"):  # a lazy proxy: scale one slice at a time below
            raw = np.asarray(dataobj.get_unscaled())
            slope, inter = dataobj.slope, dataobj.inter
        else:
            raw, slope, inter = np.asarray(dataobj), 1.0, 0.0
    except MemoryError:
        raise
    except Exception as exc:
        raise unreadable_error(path, exc) from exc
    from nibabel.volumeutils import apply_read_scaling

    shown = np.transpose(raw.reshape(plane.shape), axes)
    if plane.flip_rows:
        shown = shown[:, ::-1]
    if plane.flip_cols:
        shown = shown[:, :, ::-1]
    values = np.empty(shown.shape, dtype=np.float32)
    for k in range(shown.shape[0]):  # the same element-wise scaling as read_nifti's slices
        values[k] = apply_read_scaling(np.ascontiguousarray(shown[k]), slope, inter)
    del raw, shown

    zooms = tuple(float(z) for z in img.header.get_zooms()) + (1.0, 1.0, 1.0)
    sp = (zooms[plane.through], zooms[plane.rows], zooms[plane.cols])
    spacing = sp if all(s > 0 and math.isfinite(s) for s in sp) else None
    header = img.header
    cal_min, cal_max = _first_float(header.get("cal_min")), _first_float(header.get("cal_max"))
    file_window = None
    if cal_min is not None and cal_max is not None and cal_max > cal_min:
        file_window = ((cal_min + cal_max) / 2.0, cal_max - cal_min)
    affine = np.asarray(img.affine, dtype=np.float64)
    meta: dict[str, Any] = {
        "format": "nifti",
        # NIfTI names no modality; a caller passes a CT window only for a CT model (as read_nifti)
        "ct": True,
        "file_window": file_window,
        "n_files": 1,
        "slice_axis": plane.through,
        "orientation": "radiological",
        "axcodes": _axcodes(affine),
        "dtype": str(np.dtype(img.get_data_dtype())),
    }
    layout = StoredLayout(axes, plane.flip_rows, plane.flip_cols, plane.shape)
    return Volume(values, spacing, shape, affine, str(path), meta, layout, header.copy())


# --------------------------------------------------------------------------------------------
# DICOM series: where the files come from


class _FolderMembers:
    """Files below a folder (recursively), skipping hidden entries and ``__MACOSX``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self) -> _FolderMembers:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def keys(self) -> Iterator[Path]:
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
            for name in sorted(files):
                if not name.startswith("."):
                    yield Path(folder) / name

    def name(self, key: Path) -> str:
        return str(key.relative_to(self.root))

    def open(self, key: Path) -> Any:
        return key

    def suffix(self, key: Path) -> str:
        return key.suffix.lower()


class _ZipMembers:
    """Members of a ``.zip``, read in memory; directories, ``__MACOSX/`` and hidden files are
    skipped."""

    def __init__(self, path: Path, max_voxels: int) -> None:
        self.path = path
        self.max_voxels = max_voxels
        self.zf: zipfile.ZipFile | None = None

    def __enter__(self) -> _ZipMembers:
        try:
            self.zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise unreadable_error(self.path, exc) from exc
        # Members are decompressed in memory: refuse archives that unpack to far more than a
        # volume of max_voxels could need (8 bytes a voxel plus headers), before reading any.
        total = sum(info.file_size for info in self.keys())
        limit = 8 * self.max_voxels + 2**26
        if total > limit:
            self.zf.close()
            raise ValueError(
                f"{self.path}: the archive unpacks to {total:,} bytes, more than a volume of "
                f"max_voxels={self.max_voxels:,} needs ({limit:,} bytes); raise max_voxels if "
                "you trust the source"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.zf is not None:
            self.zf.close()

    def keys(self) -> Iterator[zipfile.ZipInfo]:
        assert self.zf is not None
        for info in self.zf.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or "__MACOSX" in parts or parts[-1].startswith("."):
                continue
            yield info

    def name(self, key: zipfile.ZipInfo) -> str:
        return key.filename

    def open(self, key: zipfile.ZipInfo) -> Any:
        assert self.zf is not None
        return io.BytesIO(self.zf.read(key))

    def suffix(self, key: zipfile.ZipInfo) -> str:
        return Path(key.filename).suffix.lower()


# --------------------------------------------------------------------------------------------
# DICOM series: headers


@dataclass
class _Header:
    """What the first pass keeps of one file's header (the dataset itself is dropped)."""

    key: Any
    name: str
    rows: int
    cols: int
    series_uid: str
    sop_uid: str
    series_description: str
    modality: str
    photometric: str
    n_frames: int
    samples: int
    iop: np.ndarray | None
    ipp: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    instance: float | None
    window: tuple[float, float] | None
    split: dict[str, Any]


def _read_header(members: Any, key: Any) -> _Header | None:
    """The header of one member, or None when it is not a DICOM image file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    def read(force: bool) -> Any:
        # defer_size: large values (the pixel data) are skipped, but their elements are listed
        return pydicom.dcmread(members.open(key), defer_size="64 KB", force=force)

    try:
        try:
            ds = read(False)
        except InvalidDicomError:
            # Old files lack the 128-byte preamble; try them when their name allows DICOM.
            suffix = members.suffix(key)
            if not (suffix in ("", ".dcm", ".dicom", ".ima") or suffix[1:].isdigit()):
                return None
            ds = read(True)
    except MemoryError:
        raise
    except Exception:
        return None
    if "Rows" not in ds or "Columns" not in ds or "PixelData" not in ds:
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (TypeError, ValueError):
        return None
    center, width = _first_float(ds.get("WindowCenter")), _first_float(ds.get("WindowWidth"))
    window = (center, width) if center is not None and width is not None and width > 0 else None
    return _Header(
        key=key,
        name=members.name(key),
        rows=rows,
        cols=cols,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        photometric=str(ds.get("PhotometricInterpretation", "") or ""),
        n_frames=int(_first_float(ds.get("NumberOfFrames", 1)) or 1),
        samples=int(_first_float(ds.get("SamplesPerPixel", 1)) or 1),
        iop=_float_vector(ds.get("ImageOrientationPatient"), 6),
        ipp=_float_vector(ds.get("ImagePositionPatient"), 3),
        pixel_spacing=_pixel_spacing(ds.get("PixelSpacing")),
        instance=_first_float(ds.get("InstanceNumber")),
        window=window,
        split={tag: _hashable(ds.get(tag)) for tag in _SPLIT_TAGS if ds.get(tag) is not None},
    )


def _float_vector(value: Any, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        v = np.asarray([float(x) for x in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return v if v.shape == (n,) and np.isfinite(v).all() else None


def _pixel_spacing(value: Any) -> tuple[float, float] | None:
    v = _float_vector(value, 2)
    if v is None or not (v > 0).all():
        return None
    return float(v[0]), float(v[1])


def _hashable(value: Any) -> Any:
    try:
        return tuple(float(x) for x in value) if not isinstance(value, str) else value
    except TypeError:
        pass
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


# --------------------------------------------------------------------------------------------
# DICOM series: checks, order, geometry, pixels


def _single_dicom_error(path: Path) -> ValueError:
    """The error for one DICOM file given where a volume is expected."""
    pydicom = _require("pydicom", "DICOM")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        frames = int(_first_float(ds.get("NumberOfFrames", 1)) or 1)
    except Exception:
        frames = 1
    if frames > 1:
        return ValueError(
            f"{path}: an enhanced multi-frame DICOM file ({frames} frames); multi-frame volumes "
            "are not supported yet. Read one frame with load_image(path, slice_index=k), or "
            "convert the file to a NIfTI or a series of single-frame files (e.g. with dcm2niix)"
        )
    return ValueError(
        f"{path} is a single DICOM file, i.e. one slice; use load_image (or model.segment) for "
        "one slice, or pass the folder (or .zip) holding the whole series to read_volume"
    )


def _counts(items: list[str]) -> str:
    parts = [f"{k} ({n} file{'s' if n != 1 else ''})" for k, n in Counter(items).most_common()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _read_dicom_series(members: Any, source: str, max_voxels: int) -> Volume:
    _require("pydicom", "DICOM")
    headers: list[_Header] = []
    looked_at = 0
    for key in members.keys():
        looked_at += 1
        h = _read_header(members, key)
        if h is not None:
            headers.append(h)
    skipped = looked_at - len(headers)
    if not headers:
        raise ValueError(
            f"{source}: no DICOM image files found ({looked_at} file(s) looked at); expected a "
            "folder or .zip holding the files of one DICOM series"
        )

    # one series
    by_series: dict[str, list[_Header]] = {}
    for h in headers:
        by_series.setdefault(h.series_uid, []).append(h)
    if len(by_series) > 1:
        listing = "; ".join(
            f"{uid or '(no SeriesInstanceUID)'} "
            f"{hs[0].series_description or '(no description)'!r} ({len(hs)} files)"
            for uid, hs in sorted(by_series.items(), key=lambda kv: -len(kv[1]))
        )
        raise ValueError(
            f"{source} holds {len(by_series)} DICOM series: {listing}. read_volume reads one "
            "series: put each in its own folder or .zip (group the files by SeriesInstanceUID "
            "(0020,000E)), then read the one you want"
        )

    multi = [h for h in headers if h.n_frames > 1]
    if multi:
        raise ValueError(
            f"{source}: {multi[0].name} is an enhanced multi-frame DICOM file "
            f"({multi[0].n_frames} frames); multi-frame volumes are not supported yet. Convert "
            "it to NIfTI or to single-frame files (e.g. with dcm2niix)"
        )
    if len(headers) == 1:
        raise ValueError(
            f"{source} holds a single DICOM image ({headers[0].name}), i.e. one slice; use "
            "load_image (or model.segment) for one slice"
        )
    colour = [h for h in headers if h.samples != 1]
    if colour:
        raise ValueError(
            f"{source}: {colour[0].name} is a colour image (SamplesPerPixel "
            f"{colour[0].samples}); a volume needs single-channel slices"
        )
    sizes = [f"{h.rows}x{h.cols}" for h in headers]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"{source}: mixed slice sizes: {_counts(sizes)}; a volume needs slices of one size "
            "(remove the odd files, e.g. a localizer or a reformat)"
        )

    # orientation and order
    iop = _series_orientation(headers, source)
    row_dir = col_dir = normal = None
    if iop is not None:
        row_dir, col_dir = _unit(iop[:3]), _unit(iop[3:])
        normal = _unit(np.cross(row_dir, col_dir))
    positions = [h.ipp for h in headers if h.ipp is not None]
    instances = [h.instance for h in headers if h.instance is not None]
    if normal is not None and len(positions) == len(headers):
        pos = np.array([float(np.dot(p, normal)) for p in positions])
        slice_order, tol = "position along the slice normal", _POSITION_TOL_MM
    elif len(instances) == len(headers):
        warnings.warn(
            f"{source}: slice positions (ImagePositionPatient/ImageOrientationPatient) are "
            "missing; ordering slices by InstanceNumber, and the slice spacing is unknown",
            stacklevel=3,
        )
        pos = np.array(instances, dtype=np.float64)
        slice_order, tol = "InstanceNumber", 0.0
    else:
        raise ValueError(
            f"{source}: cannot order the slices: ImagePositionPatient/ImageOrientationPatient "
            "and InstanceNumber are missing"
        )
    order = np.argsort(pos, kind="stable")
    headers = [headers[i] for i in order]
    pos = pos[order]
    _check_duplicates(headers, pos, tol, source, slice_order)

    n, rows, cols = len(headers), headers[0].rows, headers[0].cols
    _check_voxels((n, rows, cols), max_voxels, source)

    # geometry
    meta: dict[str, Any] = {}
    gaps = np.diff(pos)
    gap: float | None = None
    if slice_order == "InstanceNumber":
        meta["slice_gaps_mm"] = None
        meta["irregular_spacing"] = None
    else:
        gap = round(float(np.median(gaps)), 6)  # positions carry float noise (1e-14 mm)
        lo, hi = float(gaps.min()), float(gaps.max())
        irregular = hi / lo > _IRREGULAR_GAP_RATIO
        meta["slice_gaps_mm"] = {"min": lo, "median": gap, "max": hi}
        meta["irregular_spacing"] = bool(irregular)
        if irregular:
            warnings.warn(
                f"{source}: irregular slice spacing: gaps from {lo:g} to {hi:g} mm between "
                f"slice positions (missing slices?); using the median gap {gap:g} mm, so "
                "distances and volumes along the slice axis are approximate",
                stacklevel=3,
            )
    spacings = {h.pixel_spacing for h in headers}
    pixel_spacing = headers[0].pixel_spacing
    if len(spacings) > 1:
        warnings.warn(
            f"{source}: PixelSpacing differs between slices ({sorted(map(str, spacings))}); "
            f"using the first slice's {pixel_spacing}",
            stacklevel=3,
        )
    spacing = None
    if gap is not None and pixel_spacing is not None:
        spacing = (gap, pixel_spacing[0], pixel_spacing[1])
    affine = _dicom_affine(headers, row_dir, col_dir, normal, pixel_spacing, gap)

    # pixels
    values = np.empty((n, rows, cols), dtype=np.float32)
    rescaled = False
    for k, h in enumerate(headers):
        values[k], slice_rescaled = _read_slice(members, h, source)
        rescaled = rescaled or slice_rescaled

    first = headers[0]
    modality = first.modality
    ct = modality.upper() == "CT" or (not modality and _looks_like_hu_sampled(values))
    meta.update(
        {
            "format": "dicom-series",
            "ct": bool(ct),
            "file_window": first.window,
            "n_files": n,
            "skipped_files": skipped,
            "slice_axis": 0,
            "orientation": "as stored: DICOM rows top to bottom, columns left to right",
            "axcodes": _axcodes(affine),
            "plane": _plane_name(normal),
            "image_orientation": None if iop is None else [float(x) for x in iop],
            "slice_order": slice_order,
            "modality": modality,
            "photometric": first.photometric,
            "invert": first.photometric == "MONOCHROME1",
            "series_uid": first.series_uid,
            "series_description": first.series_description,
            "rescaled": rescaled,
            "files": [h.name for h in headers],
            "sop_instance_uids": [h.sop_uid for h in headers],
        }
    )
    values, spacing, layout = _as_axial(values, spacing, affine, source)
    if layout.shape3 is not None:
        meta["slice_axis"] = layout.axes[0]
        meta["orientation"] = (
            f"a {meta['plane']} series resliced to axial slices in radiological display, as a "
            "NIfTI volume is shown"
        )
    return Volume(values, spacing, (n, rows, cols), affine, source, meta, layout)


def _as_axial(values: np.ndarray, spacing, affine: np.ndarray, source: str):
    """A series cut in another plane (sagittal, coronal) shown as axial slices, exactly as
    :func:`_read_nifti_volume` shows a NIfTI file with the same affine (the models read axial
    slices; slices in stored order along the superior-inferior axis, as in NIfTI, so the
    series and its NIfTI export read the same); an axial series stays as stored. Returns
    (values, spacing, layout)."""
    geometry = type("Geometry", (), {"shape": values.shape, "affine": affine})()
    plane = _nifti_plane(geometry, Path(source))
    if plane.through == 0:
        return values, spacing, StoredLayout()
    axes = (plane.through, plane.rows, plane.cols)
    shown = np.transpose(values, axes)
    if plane.flip_rows:
        shown = shown[:, ::-1]
    if plane.flip_cols:
        shown = shown[:, :, ::-1]
    sp = None if spacing is None else tuple(spacing[a] for a in axes)
    layout = StoredLayout(axes, plane.flip_rows, plane.flip_cols, tuple(values.shape))
    return np.ascontiguousarray(shown), sp, layout


def _series_orientation(headers: list[_Header], source: str) -> np.ndarray | None:
    """The series' ImageOrientationPatient; None unless every file has one; ValueError when
    they differ."""
    iops = [h.iop for h in headers if h.iop is not None]
    if len(iops) != len(headers):
        return None
    ref = iops[0]
    if all(np.abs(v - ref).max() <= _ORIENTATION_TOL for v in iops):
        return ref
    labels = ["[" + ", ".join(f"{x:g}" for x in np.round(v, 3) + 0.0) + "]" for v in iops]
    raise ValueError(
        f"{source}: mixed orientations (ImageOrientationPatient): {_counts(labels)}; a volume "
        "needs parallel slices (remove the files of other planes)"
    )


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not norm > 0:
        raise ValueError(f"ImageOrientationPatient has a zero direction: {v.tolist()}")
    return v / norm


def _plane_name(normal: np.ndarray | None) -> str:
    if normal is None:
        return "unknown"
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _check_duplicates(
    headers: list[_Header], pos: np.ndarray, tol: float, source: str, slice_order: str
) -> None:
    groups: list[list[int]] = [[0]]
    for i in range(1, len(pos)):
        if pos[i] - pos[groups[-1][0]] <= tol:
            groups[-1].append(i)
        else:
            groups.append([i])
    sizes = [len(g) for g in groups]
    if max(sizes) == 1:
        return
    what = "a slice position" if slice_order != "InstanceNumber" else "an InstanceNumber"
    unit = " mm" if slice_order != "InstanceNumber" else ""
    if len(set(sizes)) == 1:
        k, m = sizes[0], len(groups)
        differing = [
            tag
            for tag in _SPLIT_TAGS
            if len({headers[i].split.get(tag) for i in groups[0]}) == k
            and all(tag in headers[i].split for i in groups[0])
        ]
        how = (
            f"split it by {' or '.join(differing)}, which differs between the files at one "
            "position,"
            if differing
            else "split it by TemporalPositionIdentifier, AcquisitionNumber or EchoNumbers"
        )
        raise ValueError(
            f"{source}: duplicate slice positions: every {what.split()[-1]} is shared by {k} files "
            f"({m} positions x {k}); this looks like a 4-D series (time points, echoes or "
            f"phases). {how} into one 3-D series per folder, then read each"
        )
    shared = [g for g in groups if len(g) > 1]
    n_files = sum(len(g) for g in shared)
    g = max(shared, key=len)
    names = ", ".join(headers[i].name for i in g[:4]) + (", ..." if len(g) > 4 else "")
    raise ValueError(
        f"{source}: duplicate slice positions: {n_files} files share {what} with another file "
        f"(e.g. {len(g)} files at {pos[g[0]]:g}{unit}: {names}); remove the duplicates or "
        "separate the acquisitions before reading"
    )


def _dicom_affine(
    headers: list[_Header],
    row_dir: np.ndarray | None,
    col_dir: np.ndarray | None,
    normal: np.ndarray | None,
    pixel_spacing: tuple[float, float] | None,
    gap: float | None,
) -> np.ndarray:
    """RAS affine of the ``(slice, row, col)`` stack: LPS from the DICOM geometry, then x and y
    negated. Unknown parts fall back to unit spacing and an axial orientation at the origin."""
    if row_dir is None or col_dir is None or normal is None:
        row_dir, col_dir, normal = np.eye(3)
    row_mm, col_mm = pixel_spacing if pixel_spacing is not None else (1.0, 1.0)
    first, last = headers[0].ipp, headers[-1].ipp
    if first is not None and last is not None and gap is not None:
        step = (last - first) / (len(headers) - 1)
        origin = first
    else:
        step = normal * (gap if gap is not None else 1.0)
        origin = first if first is not None else np.zeros(3)
    lps = np.eye(4)
    lps[:3, 0] = step  # slice index: from one slice position to the next
    lps[:3, 1] = col_dir * row_mm  # row index: down the column, one row spacing per row
    lps[:3, 2] = row_dir * col_mm  # column index: along the row, one column spacing per column
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _read_slice(members: Any, h: _Header, source: str) -> tuple[np.ndarray, bool]:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(members.open(h.key), force=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise ValueError(f"{source}: cannot read {h.name} ({type(exc).__name__}: {exc})") from exc
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise ValueError(
            f"{source}: cannot decode the pixel data of {h.name} (transfer syntax "
            f"{getattr(ts, 'name', ts)}: {exc}). Compressed DICOM needs a decoder plugin, e.g. "
            "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`."
        ) from exc
    if arr.shape != (h.rows, h.cols):
        raise ValueError(f"{source}: {h.name} decodes to shape {arr.shape}, not {h.rows}x{h.cols}")
    rescaled = "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds
    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32), rescaled
