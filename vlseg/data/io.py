"""Turn user input (a file, a PIL image or a numpy array) into pixels, masks and files.

This is the one entry point that the dataset, the Python API (``model.segment(image, ...)``) and
the chat app use to read images, so every caller gets the same conversions and the same errors.

Conversions (all to ``HxWx3`` ``uint8`` RGB):

- grayscale (``L``, ``1``, ``HxW`` or ``HxWx1`` arrays) is replicated to three channels;
- alpha (``RGBA``, ``LA``, ``PA``, transparent palettes, ``HxWx4`` arrays) is composited onto
  black: fully transparent pixels become black, which matches the dark background of most
  medical images and keeps "transparent = outside the image" meaning;
- palette (``P``), ``CMYK``, ``YCbCr``, ``LAB`` and ``HSV`` images are converted to RGB by PIL;
- 16-bit and 32-bit images (``I;16``, ``I``, ``F`` modes, ``uint16`` arrays) are rescaled min-max
  to ``[0, 255]``. Min-max, not a percentile clip: a percentile clip saturates small bright
  structures (calcifications, contrast, markers) that cover less than the clipped fraction of the
  image. For CT in Hounsfield units pass ``window=(level, width)`` instead, or use DICOM/NIfTI;
- float arrays must hold values in ``[0, 1]`` and are multiplied by 255;
- EXIF orientation is applied (``PIL.ImageOps.exif_transpose``).

DICOM and NIfTI files are read by :mod:`vlseg.data.medical_io` (pydicom / nibabel, imported only
when such a file is read) with pixel spacing, the modality LUT and the file's own VOI window/LUT.

Two views of one image. ``LoadedImage.rgb`` is what the model sees: with ``window=`` (the CT window
the model was trained with) CT data are windowed that way whatever the file says, so a model gets
the intensities it learnt from. ``LoadedImage.display`` is for people: the file's own VOI window or
LUT (what a DICOM viewer shows), or ``rgb`` itself when the file names none.

Masks are boolean ``HxW`` arrays; :func:`save_mask_png` writes them as 0/255 PNGs through
:func:`vlseg.atomic.atomic_write` (the one save protocol; re-exported here, with
``atomic_directory`` and ``write_json``, for older imports).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlseg.atomic import atomic_directory, atomic_write, write_json
from vlseg.data import medical_io
from vlseg.data.medical_io import (
    SUPPORTED_FORMATS,
    apply_window,
    check_pixels,
    check_window,
    unreadable_error,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "LoadedImage",
    "apply_window",
    "atomic_directory",
    "atomic_write",
    "load_image",
    "load_mask",
    "read_image_size",
    "save_mask_png",
    "to_uint8",
    "write_json",
]

DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for the model, with what is known about where it came from."""

    rgb: np.ndarray  # (H, W, 3) uint8: the model input (windowed with load_image's window=)
    spacing: tuple[float, float] | None  # mm per pixel as (row, col); None when unknown
    source: str  # human-readable origin: a path or "numpy array (uint16, shape (H, W))"
    original_dtype: str  # dtype of the stored pixels before conversion, e.g. "uint16"
    meta: dict[str, Any] = field(default_factory=dict)  # format, window, slice index, ...
    # (H, W, 3) uint8 for people: the file's own VOI window/LUT; rgb itself when the file has none
    display: np.ndarray = None  # type: ignore[assignment]  # None -> rgb, set in __post_init__

    def __post_init__(self) -> None:
        if self.display is None:
            object.__setattr__(self, "display", self.rgb)
        elif self.display.shape != self.rgb.shape:
            raise ValueError(
                f"display shape {self.display.shape} differs from rgb shape {self.rgb.shape}"
            )

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


# --------------------------------------------------------------------------------------------
# images


def load_image(
    source: str | os.PathLike[str] | Image.Image | np.ndarray | LoadedImage,
    *,
    window: tuple[float, float] | None = None,
    slice_index: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Load an image from a path, a PIL image or a numpy array as ``HxWx3`` uint8 RGB.

    Args:
        source: a file path (PNG, JPEG, BMP, TIFF, DICOM, NIfTI), a ``PIL.Image.Image``, a numpy
            array (``HxW`` or ``HxWxC`` with C in 1/3/4; bool, uint8, uint16, other integers with
            values in ``[0, 65535]``, or floats in ``[0, 1]``), or a :class:`LoadedImage`
            (returned unchanged).
        window: ``(level, width)`` of the CT window the model was trained with, in Hounsfield
            units, e.g. ``(40, 400)`` for soft tissue. It sets ``rgb`` (the model input) for
            data in physical units: DICOM with modality CT (or no modality and HU-like values),
            every NIfTI slice (NIfTI names no modality), and single-channel files or arrays
            wider than 8 bits (16-bit PNG, int16 HU arrays, floats). Other data ignore it
            (``meta["window_source"]`` says so): 8-bit, boolean and colour images are display
            values already, and a CT window means nothing for MR, X-ray or ultrasound DICOM.
            Windowed CT is not inverted for MONOCHROME1 (the model sees HU, bright = dense).
            None: DICOM and NIfTI use the file's own window/VOI LUT, else soft tissue for
            CT-like values, else min-max; other inputs convert as listed above.
        slice_index: slice of a NIfTI volume (along the voxel axis closest to superior-inferior)
            or frame of a multi-frame DICOM; default the middle one. Ignored for 2-D images.
        max_pixels: refuse images with more than this many pixels (a guard against
            decompression bombs), checked from the header before any pixel is decoded.

    Returns:
        The converted image. ``rgb`` feeds the model; ``display`` shows the image the way the
        file asks (DICOM VOI LUT or window, NIfTI cal_min/cal_max) and equals ``rgb`` when the
        file names no window. ``spacing`` is set for DICOM and NIfTI files. ``meta["window"]``
        is the ``(level, width)`` behind ``rgb`` (None for min-max, a VOI LUT or no windowing)
        and ``meta["window_source"]`` where it came from: "model" (``window=``), "file",
        "file VOI LUT", "default soft tissue" or "min-max".

    Raises:
        FileNotFoundError: the path does not exist.
        TypeError: ``source`` is none of the accepted types.
        ValueError: the file is not a readable image, the array has an unsupported shape or
            dtype, the image is empty, or it is larger than ``max_pixels``.
    """
    if isinstance(source, LoadedImage):
        return source
    if window is not None:
        window = check_window(window)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source), window, slice_index, max_pixels)
    if isinstance(source, Image.Image):
        name = f"PIL image (mode {source.mode}, {source.width}x{source.height})"
        check_pixels(source.height, source.width, max_pixels, name)
        arr = _pil_to_array(source, name)
        rgb, meta = _plain_to_rgb(arr, window, name, from_file=True)
        meta.update(format="pil", mode=source.mode)
        return LoadedImage(rgb, None, name, str(arr.dtype), meta)
    if isinstance(source, np.ndarray):
        name = f"numpy array ({source.dtype}, shape {tuple(source.shape)})"
        if source.ndim >= 2:
            check_pixels(source.shape[0], source.shape[1], max_pixels, name)
        rgb, meta = _plain_to_rgb(source, window, name, from_file=False)
        meta.update(format="array")
        return LoadedImage(rgb, None, name, str(source.dtype), meta)
    raise TypeError(
        f"cannot load an image from {type(source).__module__}.{type(source).__qualname__}; "
        "expected a path (str or pathlib.Path), a PIL.Image.Image or a numpy.ndarray "
        "(for a torch tensor pass tensor.permute(1, 2, 0).cpu().numpy())"
    )


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header without decoding the pixels.

    For NIfTI this is the size of the displayed slice (see :func:`load_image`).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image.
    """
    path = _check_path(Path(path))
    if medical_io.is_dicom(path):
        return medical_io.dicom_size(path)
    if medical_io.is_nifti(path):
        return medical_io.nifti_size(path)
    with _open_pil(path) as im:
        w, h = im.size
        # EXIF orientations 5-8 swap the axes.
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            w, h = h, w
    return int(h), int(w)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Rescale an array min-max to uint8 ``[0, 255]`` (a constant array maps to 0).

    Non-finite values are ignored when finding the range and map to 0.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return np.zeros(v.shape, dtype=np.uint8)
    lo, hi = float(v[finite].min()), float(v[finite].max())
    if hi <= lo:
        return np.zeros(v.shape, dtype=np.uint8)
    out = np.where(finite, (v - lo) / (hi - lo), 0.0)
    return np.rint(out * 255.0).astype(np.uint8)


def _load_path(
    path: Path, window: tuple[float, float] | None, slice_index: int | None, max_pixels: int
) -> LoadedImage:
    path = _check_path(path)
    if medical_io.is_dicom(path):
        values, info = medical_io.read_dicom(path, frame=slice_index, max_pixels=max_pixels)
    elif medical_io.is_nifti(path):
        values, info = medical_io.read_nifti(path, slice_index=slice_index, max_pixels=max_pixels)
    else:
        return _load_pil_file(path, window, max_pixels)
    if values.size == 0:
        raise ValueError(f"{path}: the image is empty (shape {values.shape})")
    meta = dict(info.meta)
    if values.ndim == 3:  # colour DICOM: already display values
        rgb = _array_to_rgb(values, str(path), strict_float=False)
        meta.update(window=None, window_source="colour")
        return LoadedImage(rgb, info.spacing, str(path), info.dtype, meta)
    if window is not None and info.ct:
        gray = apply_window(values, *window)  # HU, not inverted: what the model learnt from
        meta.update(window=window, window_source="model")
    elif info.view is not None:
        gray = info.view
        lut = meta.get("voi") == "VOI LUT"
        meta.update(window=meta.get("file_window"), window_source="file VOI LUT" if lut else "file")
    else:
        win = info.window
        gray = apply_window(values, *win) if win is not None else to_uint8(values)
        if info.invert:
            gray = 255 - gray
        source = "min-max" if win is None else "default soft tissue"
        meta.update(window=win, window_source=source)
    if window is not None and not info.ct:
        meta["window_source"] += f" (window= ignored: modality {meta.get('modality')!r} is not CT)"
    rgb = np.ascontiguousarray(_gray_to_rgb(gray))
    display = None if info.view is None or info.view is gray else _gray_to_rgb(info.view)
    return LoadedImage(rgb, info.spacing, str(path), info.dtype, meta, display)


def _load_pil_file(path: Path, window: tuple[float, float] | None, max_pixels: int) -> LoadedImage:
    with _open_pil(path) as im:
        check_pixels(im.height, im.width, max_pixels, str(path))
        meta: dict[str, Any] = {"format": (im.format or "").lower(), "mode": im.mode}
        if getattr(im, "n_frames", 1) > 1:
            meta["n_frames"] = im.n_frames  # only the first frame is read
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            arr = _pil_to_array(im, str(path))
        except MemoryError:
            raise
        except Exception as exc:  # PIL raises many exception types for corrupt data
            raise unreadable_error(path, exc) from exc
    rgb, window_meta = _plain_to_rgb(arr, window, str(path), from_file=True)
    return LoadedImage(rgb, None, str(path), str(arr.dtype), {**meta, **window_meta})


def _open_pil(path: Path) -> Image.Image:
    """Open lazily (header only). PIL's own bomb limit becomes the same ValueError as ours."""
    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"{path} is too large to load safely: {exc} Lower-resolution input is required."
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise unreadable_error(path, exc) from exc


def _pil_to_array(im: Image.Image, name: str) -> np.ndarray:
    """Decode a PIL image to ``HxW`` (gray, any depth), ``HxWx3`` or ``HxWx4`` numpy."""
    mode = im.mode
    if mode in ("1", "L", "RGB", "RGBA") or mode.startswith("I") or mode == "F":
        arr = np.asarray(im)
    elif mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in im.info):
        arr = np.asarray(im.convert("RGBA"))
    else:  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...
        try:
            arr = np.asarray(im.convert("RGB"))
        except ValueError as exc:
            raise ValueError(f"{name}: cannot convert PIL mode {mode!r} to RGB ({exc})") from exc
    if arr.dtype.byteorder not in ("=", "|"):  # e.g. I;16B gives big-endian uint16
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _plain_to_rgb(
    arr: np.ndarray, window: tuple[float, float] | None, name: str, *, from_file: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pixels of a PNG/JPEG/TIFF file, PIL image or array as HxWx3 uint8, and window meta.

    ``window`` applies only to single-channel data wider than 8 bits (the only such data that
    can hold Hounsfield units); 8-bit, boolean and colour pixels are display values already.
    """
    if window is None:
        return (_file_array_to_rgb(arr, name) if from_file else _array_to_rgb(arr, name)), {}
    gray = arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
    if gray.ndim == 2 and gray.size and gray.dtype.kind in "iuf" and gray.dtype != np.uint8:
        rgb = np.ascontiguousarray(_gray_to_rgb(apply_window(gray, *window)))
        return rgb, {"window": window, "window_source": "model"}
    rgb = _file_array_to_rgb(arr, name) if from_file else _array_to_rgb(arr, name)
    return rgb, {"window": None, "window_source": "none (window= ignored: 8-bit or colour)"}


def _file_array_to_rgb(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.size == 0:
        raise ValueError(f"{name}: the image is empty (shape {arr.shape})")
    # High-bit-depth files (I;16, I, F) are not bounded like arrays are: always rescale them.
    if arr.ndim == 2 and arr.dtype not in (np.uint8, np.bool_):
        if arr.dtype.kind == "f" and _in_unit_range(arr):
            return _gray_to_rgb(np.rint(arr * 255.0).astype(np.uint8))
        return _gray_to_rgb(to_uint8(arr))
    return _array_to_rgb(arr, name, strict_float=False)


def _array_to_rgb(arr: np.ndarray, name: str, *, strict_float: bool = True) -> np.ndarray:
    """Validate and convert an ``HxW``/``HxWxC`` array to ``HxWx3`` uint8."""
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"{name}: unsupported dtype {arr.dtype}; pass real-valued pixels "
            "(bool, uint8, uint16, or float in [0, 1]); for complex data pass np.abs(array)"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] not in (3, 4):
        hint = (
            "; it looks channels-first, use np.moveaxis(array, 0, -1)"
            if arr.shape[0] in (1, 3, 4)
            else ""
        )
        raise ValueError(
            f"{name}: expected HxW or HxWxC with C in 1, 3 or 4, got shape {arr.shape}{hint}"
        )
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{name}: expected HxW or HxWxC with C in 1, 3 or 4, got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name}: the image is empty (shape {arr.shape})")
    alpha = None
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr, alpha = arr[:, :, :3], _alpha_to_unit(arr[:, :, 3], name)
    out = _values_to_uint8(arr, name, strict_float)
    if alpha is not None:
        out = np.rint(out * alpha[:, :, None]).astype(np.uint8)
    return np.ascontiguousarray(_gray_to_rgb(out) if out.ndim == 2 else out)


def _values_to_uint8(arr: np.ndarray, name: str, strict_float: bool) -> np.ndarray:
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint8:
        return arr
    if kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: the image contains NaN or infinite values")
        if _in_unit_range(arr):
            return np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
        lo, hi = float(arr.min()), float(arr.max())
        if strict_float:
            raise ValueError(
                f"{name}: float images must hold values in [0, 1], got range [{lo:g}, {hi:g}]; "
                "divide by 255 (or by the maximum), convert to uint8, or pass "
                "window=(level, width) for Hounsfield units"
            )
        return to_uint8(arr)
    # integers
    lo, hi = int(arr.min()), int(arr.max())
    if arr.dtype == np.uint16:
        return to_uint8(arr)
    if 0 <= lo and hi <= 255:
        return arr.astype(np.uint8)
    if 0 <= lo and hi <= 65535:
        return to_uint8(arr)
    raise ValueError(
        f"{name}: integer values must lie in [0, 65535], got range [{lo}, {hi}] ({arr.dtype}); "
        "for Hounsfield units pass window=(level, width), e.g. (40, 400), otherwise rescale to "
        "uint8"
    )


def _alpha_to_unit(alpha: np.ndarray, name: str) -> np.ndarray:
    kind = alpha.dtype.kind
    if kind == "b":
        return alpha.astype(np.float64)
    if kind == "f":
        if not (np.isfinite(alpha).all() and _in_unit_range(alpha)):
            raise ValueError(f"{name}: a float alpha channel must hold values in [0, 1]")
        return alpha.astype(np.float64)
    if alpha.dtype == np.uint16:
        return alpha / 65535.0
    return np.clip(alpha, 0, 255) / 255.0


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _in_unit_range(arr: np.ndarray) -> bool:
    return bool(arr.min() >= 0.0 and arr.max() <= 1.0)


def _check_path(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an image file")
    return path


# --------------------------------------------------------------------------------------------
# masks


def load_mask(
    source: str | os.PathLike[str] | Image.Image | np.ndarray,
    size: tuple[int, int] | None = None,
    *,
    binarize: bool = False,
    slice_index: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Load a binary mask as a boolean ``HxW`` array.

    Accepted encodings: 0/1, 0/255, or any two values of which one is 0 (palette PNGs), in gray,
    RGB or RGBA (alpha is composited onto black, so transparent pixels are background). Non-zero
    pixels are foreground. Anything with more than two distinct values (or colours) is rejected,
    since it is either a multi-class label map or a lossy (JPEG) mask, unless ``binarize=True``,
    which thresholds the gray value at the midpoint of its range (colour: the channel maximum).

    Args:
        source: a mask file (PNG, BMP, TIFF, JPEG, NIfTI), a PIL image or a numpy array.
        size: ``(H, W)`` to resize to (nearest neighbour); None keeps the stored size.
        binarize: threshold non-binary masks instead of rejecting them.
        slice_index: slice of a NIfTI mask volume (as in :func:`load_image`).
        max_pixels: size guard, as in :func:`load_image`.

    Returns:
        ``HxW`` bool array, True on the foreground.

    Raises:
        FileNotFoundError: the path does not exist.
        TypeError: ``source`` is none of the accepted types.
        ValueError: unreadable file, bad shape, or a non-binary mask without ``binarize``.
    """
    if isinstance(source, (str, os.PathLike)):
        path = _check_path(Path(source))
        name = str(path)
        if medical_io.is_nifti(path):
            arr, _ = medical_io.read_nifti(path, slice_index=slice_index, max_pixels=max_pixels)
        elif medical_io.is_dicom(path):
            raise ValueError(f"{path}: DICOM masks are not supported; export the mask as PNG")
        else:
            with _open_pil(path) as im:
                check_pixels(im.height, im.width, max_pixels, name)
                try:
                    arr = _pil_to_array(ImageOps.exif_transpose(im), name)
                except MemoryError:
                    raise
                except Exception as exc:
                    raise unreadable_error(path, exc) from exc
    elif isinstance(source, Image.Image):
        name = f"PIL mask (mode {source.mode}, {source.width}x{source.height})"
        arr = _pil_to_array(source, name)
    elif isinstance(source, np.ndarray):
        name = f"mask array ({source.dtype}, shape {tuple(source.shape)})"
        arr = source
    else:
        raise TypeError(
            f"cannot load a mask from {type(source).__qualname__}; expected a path, a "
            "PIL.Image.Image or a numpy.ndarray"
        )
    mask = _mask_from_array(arr, name, binarize)
    if size is not None and tuple(size) != mask.shape:
        h, w = (int(v) for v in size)
        if h <= 0 or w <= 0:
            raise ValueError(f"size must be a positive (H, W), got {size!r}")
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
        mask = np.asarray(resized) > 0
    return mask


def _mask_from_array(arr: np.ndarray, name: str, binarize: bool) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: unsupported mask dtype {arr.dtype}; use bool or uint8")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"{name}: expected an HxW (or HxWx3/4) mask, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: the mask is empty (shape {arr.shape})")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name}: the mask contains NaN or infinite values")
    if arr.dtype.kind == "b":
        return arr.any(axis=2) if arr.ndim == 3 else arr.copy()
    if arr.ndim == 3:
        colour: np.ndarray = arr[:, :, :3]
        if arr.shape[2] == 4:
            alpha = _alpha_to_unit(arr[:, :, 3], name)
            if not (alpha == 1.0).all():  # opaque masks (the usual case) keep the fast path
                colour = colour * alpha[:, :, None]
        gray = colour.max(axis=2)
    else:
        colour = gray = arr
    values = _distinct(colour)
    binary = len(values) == 1 or (len(values) == 2 and not values[0].any())
    if binary:
        return np.asarray(gray != 0)
    if not binarize:
        shown = ", ".join(_fmt_value(v) for v in values[:8])
        more = f", ... ({len(values)} in all)" if len(values) > 8 else ""
        raise ValueError(
            f"{name} is not a binary mask: found values {shown}{more}; expected background 0 "
            "and one foreground value (e.g. 1 or 255). Pass binarize=True to threshold at the "
            "midpoint, or fix the file (a lossy JPEG mask, or a multi-class label map?)"
        )
    lo, hi = float(np.min(gray)), float(np.max(gray))
    return np.asarray(gray > (lo + hi) / 2.0)


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an ``HxW`` array (shape ``(N, 1)``) or colours of ``HxWx3``
    (shape ``(N, 3)``); all-zero sorts first."""
    if values.ndim == 2:
        if values.dtype == np.uint8:  # bincount beats sorting millions of pixels
            return np.flatnonzero(np.bincount(values.ravel(), minlength=256))[:, None]
        return np.unique(values.ravel())[:, None]
    flat = values.reshape(-1, 3)
    if flat.dtype in (np.uint8, np.uint16):
        packed = (
            (flat[:, 0].astype(np.int64) << 32) | (flat[:, 1].astype(np.int64) << 16) | flat[:, 2]
        )
        keys = np.unique(packed)
        return np.stack([keys >> 32, (keys >> 16) & 0xFFFF, keys & 0xFFFF], axis=1)
    return np.unique(flat, axis=0)


def _fmt_value(v: np.ndarray) -> str:
    items = [f"{x:g}" for x in np.atleast_1d(v).tolist()]
    return items[0] if len(items) == 1 else "(" + ", ".join(items) + ")"


def save_mask_png(mask: np.ndarray, path: str | os.PathLike[str], *, durable: bool = True) -> Path:
    """Write a binary mask as an 8-bit 0/255 PNG, atomically (never a half-written file).

    Args:
        mask: ``HxW`` bool array, or any array accepted by :func:`load_mask` (0/1, 0/255, ...).
        path: destination; parent directories are created.
        durable: fsync it (see :func:`vlseg.atomic.atomic_write`).

    Returns:
        The destination path.
    """
    binary = load_mask(np.asarray(mask))
    path = Path(path)
    with atomic_write(path, durable=durable) as tmp:
        Image.fromarray(binary.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")
    return path
