"""Tests for vlseg.data.io (and the DICOM/NIfTI readers behind it)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlseg.data.io import (
    LoadedImage,
    apply_window,
    load_image,
    load_mask,
    read_image_size,
    save_mask_png,
    to_uint8,
)

# --------------------------------------------------------------------------------------------
# helpers


def png_with_header_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose IHDR claims ``width x height`` (its pixel data is far too short)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------------------------
# PNG / PIL modes


def test_grayscale_png_replicated_to_rgb(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.rgb.shape == (3, 4, 3) and img.rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img.rgb[:, :, c], gray)
    assert img.spacing is None and img.original_dtype == "uint8" and img.size == (3, 4)
    assert img.source == str(tmp_path / "g.png")


def test_rgba_png_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[255, 0], [51, 255]]
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    rgb = load_image(tmp_path / "a.png").rgb
    np.testing.assert_array_equal(rgb[0, 0], [200, 100, 50])
    np.testing.assert_array_equal(rgb[0, 1], [0, 0, 0])  # fully transparent -> black
    np.testing.assert_array_equal(rgb[1, 0], [40, 20, 10])  # alpha 0.2


def test_la_png_composited(tmp_path: Path) -> None:
    la = Image.merge("LA", [Image.new("L", (2, 1), 100), Image.new("L", (2, 1), 0)])
    la.putpixel((0, 0), (100, 255))
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(tmp_path / "la.png").rgb[0, :, 0], [100, 0])


def test_16bit_png_rescaled_min_max(tmp_path: Path) -> None:
    values = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    img = load_image(tmp_path / "d.png")
    np.testing.assert_array_equal(img.rgb[:, :, 0], [[0, 64], [128, 255]])
    assert img.original_dtype == "uint16"


def test_16bit_png_with_window(tmp_path: Path) -> None:
    values = np.array([[0, 1024, 1224]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    rgb = load_image(tmp_path / "d.png", window=(1024, 400)).rgb
    np.testing.assert_array_equal(rgb[0, :, 1], [0, 128, 255])


def test_palette_png(tmp_path: Path) -> None:
    im = Image.new("P", (3, 1))
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    im.putpixel((1, 0), 1)
    im.putpixel((2, 0), 2)
    im.save(tmp_path / "p.png")
    rgb = load_image(tmp_path / "p.png").rgb
    np.testing.assert_array_equal(rgb[0], [[0, 0, 0], [255, 0, 0], [0, 0, 255]])


def test_cmyk_image_converted() -> None:
    rgb = load_image(Image.new("CMYK", (2, 2), (0, 255, 0, 0))).rgb
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 255])


def test_exif_orientation_applied(tmp_path: Path) -> None:
    stored = np.zeros((2, 4), np.uint8)
    stored[0, 0] = 255  # top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    Image.fromarray(stored, mode="L").save(tmp_path / "e.png", exif=exif)
    img = load_image(tmp_path / "e.png")
    assert img.size == (4, 2) == read_image_size(tmp_path / "e.png")
    assert img.rgb[0, 1, 0] == 255 and int(img.rgb[..., 0].sum()) == 255


# --------------------------------------------------------------------------------------------
# arrays


def test_array_dtypes_and_shapes() -> None:
    np.testing.assert_array_equal(load_image(np.array([[True, False]])).rgb[0, :, 0], [255, 0])
    np.testing.assert_array_equal(
        load_image(np.array([[0.0, 0.5, 1.0]])).rgb[0, :, 2], [0, 128, 255]
    )
    u8 = np.array([[[7], [9]]], dtype=np.uint8)  # HxWx1
    np.testing.assert_array_equal(load_image(u8).rgb[0, :, 1], [7, 9])
    i64 = np.array([[3, 250]], dtype=np.int64)  # fits uint8: kept as is
    np.testing.assert_array_equal(load_image(i64).rgb[0, :, 0], [3, 250])
    u16 = np.array([[100, 300]], dtype=np.uint16)
    np.testing.assert_array_equal(load_image(u16).rgb[0, :, 0], [0, 255])
    rgba = np.ones((1, 2, 4), np.float32)
    rgba[0, 1, 3] = 0.5
    np.testing.assert_array_equal(load_image(rgba).rgb[0, :, 0], [255, 128])
    img = load_image(np.zeros((5, 6, 3), np.uint8))
    assert img.rgb.shape == (5, 6, 3) and img.original_dtype == "uint8"
    assert "numpy array" in img.source
    assert load_image(img) is img  # LoadedImage passes through


def test_array_window_for_hounsfield_units() -> None:
    hu = np.array([[-1000, -160, 40, 240, 1000]], dtype=np.int16)
    np.testing.assert_array_equal(
        load_image(hu, window=(40, 400)).rgb[0, :, 0], [0, 0, 128, 255, 255]
    )


def test_helpers() -> None:
    np.testing.assert_array_equal(apply_window(np.array([-160.0, 240.0]), 40, 400), [0, 255])
    np.testing.assert_array_equal(to_uint8(np.array([5.0, 5.0])), [0, 0])  # constant -> 0
    np.testing.assert_array_equal(to_uint8(np.array([1.0, np.nan, 3.0])), [0, 0, 255])
    with pytest.raises(ValueError, match="width > 0"):
        apply_window(np.zeros(2), 40, 0)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((4, 4, 5), np.uint8), r"got shape \(4, 4, 5\)"),
        (np.zeros((3, 8, 8), np.uint8), r"np\.moveaxis"),
        (np.zeros((2, 2, 2, 2), np.uint8), "HxW or HxWxC"),
        (np.zeros((0, 4), np.uint8), "empty"),
        (np.array([[0, 70000]], dtype=np.int64), r"\[0, 65535\].*int64.*window="),
        (np.array([[-1000, 40]], dtype=np.int16), r"window=\(level, width\)"),
        (np.zeros((2, 2), np.complex64), "unsupported dtype complex64"),
        (np.array([[0.0, 255.0]]), r"\[0, 1\].*divide by 255"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([["a"]]), "unsupported dtype"),
    ],
)
def test_bad_arrays(array: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_image(array)


def test_empty_pil_image() -> None:
    with pytest.raises(ValueError, match="empty"):
        load_image(Image.new("I;16", (0, 3)))


def test_wrong_type_names_type_and_choices() -> None:
    with pytest.raises(TypeError, match=r"builtins\.list.*path.*PIL\.Image\.Image.*numpy"):
        load_image([[0, 1]])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# file errors and the size guard


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_corrupt_and_truncated_files(tmp_path: Path) -> None:
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ValueError, match=r"junk\.png is not a readable image.*PNG, JPEG.*NIfTI"):
        load_image(tmp_path / "junk.png")
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png is not a readable image"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="is a directory"):
        load_image(tmp_path)


def test_max_pixels_guard(tmp_path: Path) -> None:
    Image.new("L", (10, 10)).save(tmp_path / "s.png")
    with pytest.raises(ValueError, match=r"10x10 = 100 pixels exceeds the limit of 99"):
        load_image(tmp_path / "s.png", max_pixels=99)
    assert load_image(tmp_path / "s.png", max_pixels=100).size == (10, 10)
    with pytest.raises(ValueError, match="exceeds the limit"):
        load_image(np.zeros((10, 10), np.uint8), max_pixels=50)


def test_decompression_bomb_refused_from_header(tmp_path: Path) -> None:
    # The header claims 8000x8000 (64M pixels) but holds one pixel: decoding would fail with a
    # different error, so this message proves the size was checked before decoding.
    bomb = png_with_header_size(tmp_path / "bomb.png", 8000, 8000)
    with pytest.raises(ValueError, match=r"64,000,000 pixels exceeds the limit of 50,000,000"):
        load_image(bomb)
    # Beyond PIL's own hard limit the error is still a ValueError about size.
    huge = png_with_header_size(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(ValueError, match="too large|exceeds"):
        load_image(huge)


# --------------------------------------------------------------------------------------------
# masks


def test_mask_encodings(tmp_path: Path) -> None:
    expected = np.array([[0, 1, 1], [0, 0, 1]], dtype=bool)
    Image.fromarray(expected.astype(np.uint8)).save(tmp_path / "m01.png")
    Image.fromarray(expected.astype(np.uint8) * 255).save(tmp_path / "m255.png")
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[expected] = (0, 255, 0)
    Image.fromarray(rgb).save(tmp_path / "mrgb.png")
    rgba = np.full((2, 3, 4), 255, np.uint8)  # white everywhere, transparent background
    rgba[~expected, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "mrgba.png")
    for name in ("m01.png", "m255.png", "mrgb.png", "mrgba.png"):
        mask = load_mask(tmp_path / name)
        assert mask.dtype == bool, name
        np.testing.assert_array_equal(mask, expected, err_msg=name)
    np.testing.assert_array_equal(load_mask(expected), expected)
    assert not load_mask(np.zeros((2, 2), np.uint8)).any()
    assert load_mask(np.full((2, 2), 255, np.uint8)).all()


def test_non_binary_mask_rejected_unless_binarize(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2], [0, 2, 200]], dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "labels.png")
    with pytest.raises(
        ValueError, match=r"labels\.png is not a binary mask: found values 0, 1, 2, 200"
    ):
        load_mask(tmp_path / "labels.png")
    binarized = load_mask(tmp_path / "labels.png", binarize=True)  # threshold at 100
    np.testing.assert_array_equal(binarized, [[0, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match=r"found values \(0, 0, 0\), \(0, 255, 0\), \(255, 0, 0\)"):
        load_mask(np.array([[[0, 0, 0], [255, 0, 0], [0, 255, 0]]], dtype=np.uint8))
    with pytest.raises(ValueError, match="not a binary mask"):
        load_mask(np.array([[3, 7]], dtype=np.uint8))  # two values but no zero background


def test_mask_resize_and_errors(tmp_path: Path) -> None:
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    big = load_mask(mask, size=(8, 8))
    assert big.shape == (8, 8) and big[:4, :4].all() and not big[4:].any()
    with pytest.raises(FileNotFoundError):
        load_mask(tmp_path / "none.png")
    with pytest.raises(ValueError, match=r"HxW.*got shape \(2, 2, 2\)"):
        load_mask(np.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="expected a path"):
        load_mask(3)  # type: ignore[arg-type]


def test_nifti_mask(tmp_path: Path) -> None:
    import nibabel as nib

    labels = np.zeros((6, 5, 3), np.uint8)
    labels[0, 4, 1] = 1
    nib.save(nib.Nifti1Image(labels, np.diag([0.7, 0.8, 2.5, 1.0])), tmp_path / "seg.nii.gz")
    mask = load_mask(tmp_path / "seg.nii.gz")
    assert mask.shape == (5, 6) and mask[0, 5] and mask.sum() == 1  # same display as the image


def test_save_mask_png_round_trip(tmp_path: Path) -> None:
    mask = np.random.default_rng(0).random((7, 9)) > 0.5
    out = save_mask_png(mask, tmp_path / "sub" / "m.png")
    with Image.open(out) as im:
        assert im.mode == "L" and im.size == (9, 7)
        assert set(np.unique(np.asarray(im)).tolist()) == {0, 255}
    np.testing.assert_array_equal(load_mask(out), mask)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["m.png"]  # no temp left
    assert (out.stat().st_mode & 0o777) != 0o600  # normal permissions, not mkstemp's


def test_loaded_image_is_frozen() -> None:
    img = load_image(np.zeros((2, 2), np.uint8))
    assert isinstance(img, LoadedImage)
    with pytest.raises(AttributeError):
        img.spacing = (1.0, 1.0)  # type: ignore[misc]
