"""Tests for vlseg.data.ood_images: deterministic, well-formed, every kind, all images distinct."""

from __future__ import annotations

import ast
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vlseg.data import ood_images as mod
from vlseg.data.ood_images import KINDS, OODImage, ood_images, photo_paths

N = 5  # one full cycle of the synthetic variants


@pytest.fixture(scope="module")
def images() -> list[OODImage]:
    return ood_images(N, seed=0, size=64)


def test_shapes_and_dtypes(images):
    for im in images:
        assert isinstance(im, OODImage)
        assert im.image.shape == (64, 64, 3), im.name
        assert im.image.dtype == np.uint8, im.name
        assert im.image.flags.c_contiguous


def test_size_parameter():
    assert {im.image.shape for im in ood_images(1, size=40)} == {(40, 40, 3)}


def test_every_kind_present(images):
    assert Counter(im.kind for im in images) == dict.fromkeys(KINDS, N)
    assert len({im.name for im in images}) == len(images)
    assert all(im.name.startswith(f"{im.kind}_") for im in images)
    assert {im.name.split("_")[-1] for im in images if im.kind == "synthetic"} == {
        "cat",
        "document",
        "checkerboard",
        "gradient",
        "noise",
    }


def test_deterministic_per_seed(images):
    again = ood_images(N, seed=0, size=64)
    assert [a.name for a in again] == [b.name for b in images]
    for a, b in zip(again, images, strict=True):
        np.testing.assert_array_equal(a.image, b.image, err_msg=a.name)
    other = ood_images(N, seed=1, size=64)
    changed = [not np.array_equal(a.image, b.image) for a, b in zip(other, images, strict=True)]
    assert all(changed)


def test_image_i_does_not_depend_on_n_per_kind(images):
    first = {im.kind: im for im in ood_images(1, seed=0, size=64)}
    for im in images:
        if im.name.startswith(f"{im.kind}_000"):
            np.testing.assert_array_equal(first[im.kind].image, im.image)


def test_images_differ_and_are_not_blank(images):
    digests = {hashlib.sha256(im.image.tobytes()).hexdigest() for im in images}
    assert len(digests) == len(images)
    for im in images:
        assert im.image.astype(float).std() > 5, im.name


def test_kind_character(images):
    by_kind = {k: [im.image for im in images if im.kind == k] for k in KINDS}
    for kind in ("head_ct", "chest_xray", "brain_mri", "ultrasound"):  # greyscale modalities
        for img in by_kind[kind]:
            assert (img == img[..., :1]).all(), kind
    for img in by_kind["histology"]:  # H&E: pink/purple, red and blue above green
        r, g, b = img.reshape(-1, 3).mean(0)
        assert r > g and b > g
    for img in by_kind["head_ct"]:  # bright skull ring, dark air around it
        assert img[0, 0].max() < 10 and (img == 255).mean() > 0.03


def test_natural_photos_come_from_installed_packages(images):
    paths = photo_paths()
    assert any(p.name == "grace_hopper.jpg" for p in paths)  # matplotlib is a dependency
    assert len({p.resolve() for p in paths}) == len(paths)
    stems = {p.stem for p in paths}
    for im in images:
        if im.kind == "natural_photo":
            assert im.name.split("_", 3)[-1] in stems


def test_does_not_use_phantom_renderers():
    tree = ast.parse(Path(mod.__file__).read_text())
    imported = [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert not [m for m in imported if "phantoms" in m or m.startswith(".")]
