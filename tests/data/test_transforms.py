"""Tests for vlseg.data.transforms: image and mask stay aligned, no flips, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlseg.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    AugmentConfig,
    SegTransform,
    denormalize,
    image_to_tensor,
    mask_to_tensor,
    normalize,
    random_geometric,
    random_intensity,
    resize_image,
    resize_mask,
)


def square_pair(h: int = 60, w: int = 80, box: tuple[int, int, int, int] = (15, 35, 10, 34)):
    """Dark image with one bright square, and the mask of exactly that square."""
    y0, y1, x0, x1 = box
    rgb = np.full((h, w, 3), 30, np.uint8)
    rgb[y0:y1, x0:x1] = 230
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return rgb, mask


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def bright(image01: torch.Tensor) -> torch.Tensor:
    """Pixels of the bright square in a [0, 1] image (1xHxW)."""
    return (image01.mean(0, keepdim=True) > 0.5).float()


@pytest.mark.parametrize("size", [(32, 32), (45, 23), (120, 160)])
def test_resize_keeps_mask_on_the_square(size: tuple[int, int]) -> None:
    rgb, mask = square_pair()
    image = resize_image(image_to_tensor(rgb), size)
    target = resize_mask(mask_to_tensor(mask), size)
    assert image.shape == (3, *size) and target.shape == (1, *size)
    assert image.dtype == torch.float32 and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    assert set(target.unique().tolist()) <= {0.0, 1.0}
    assert iou(bright(image), target) > 0.9


def test_augmentation_keeps_alignment_and_never_flips() -> None:
    rgb, mask = square_pair(box=(20, 40, 8, 30))  # square in the left half
    cfg = AugmentConfig(p_geometric=1.0, noise_std=0.0, brightness=0.0, contrast=0.0, gamma=(1, 1))
    t = SegTransform((48, 64), mean=(0, 0, 0), std=(1, 1, 1), augment=cfg)
    changed = 0
    for seed in range(20):
        image, target = t(rgb, mask, np.random.default_rng(seed))
        assert target is not None and target.any()
        assert iou(bright(image), target) > 0.85, seed
        cols = target[0].nonzero()[:, 1].float()
        assert cols.mean() < 32, f"seed {seed}: the target moved to the right half"
        plain = resize_mask(mask_to_tensor(mask), (48, 64))
        changed += int(not torch.equal(target, plain))
    assert changed >= 15  # the geometric op really ran


def test_geometric_is_deterministic_and_keeps_positives() -> None:
    rgb, mask = square_pair(box=(0, 4, 0, 4))  # tiny, in the corner: easy to push out of view
    image, target = image_to_tensor(rgb), mask_to_tensor(mask)
    cfg = AugmentConfig(p_geometric=1.0, scale=(1.5, 1.5), max_translate=0.3)
    for seed in range(10):
        a = random_geometric(image, target, np.random.default_rng(seed), cfg)
        b = random_geometric(image, target, np.random.default_rng(seed), cfg)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[1] is not None and a[1].any()  # never turns a positive into an empty mask


def test_intensity_changes_image_only_within_range() -> None:
    rgb, _ = square_pair()
    image = image_to_tensor(rgb)
    out = random_intensity(image, np.random.default_rng(0))
    assert out.shape == image.shape and not torch.equal(out, image)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out - image).abs().mean()) < 0.2


def test_normalize_round_trip_and_transform_output() -> None:
    rgb, mask = square_pair()
    image = image_to_tensor(rgb)
    norm = normalize(image)
    expected = (image[0, 0, 0] - CLIP_MEAN[0]) / CLIP_STD[0]
    assert torch.isclose(norm[0, 0, 0], expected)
    assert torch.allclose(denormalize(norm), image, atol=1e-6)
    out, target = SegTransform(32)(rgb, mask)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert target is not None and target.shape == (1, 32, 32) and target.dtype == torch.float32
    out_none, none = SegTransform(32)(rgb, None)
    assert none is None and torch.equal(out, out_none)


def test_transform_errors() -> None:
    rgb, mask = square_pair()
    with pytest.raises(ValueError, match="differs from image shape"):
        SegTransform(32)(rgb, mask[:-1])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        image_to_tensor(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="image_size"):
        SegTransform((32, 32, 3))
    with pytest.raises(ValueError, match="std > 0"):
        SegTransform(32, std=(0, 1, 1))


def test_invert_grey_inverts_grey_images_only_and_is_off_by_default():
    grey = torch.rand(1, 16, 16).expand(3, 16, 16).clone()
    colour = torch.rand(3, 16, 16)
    flat = AugmentConfig(brightness=0, contrast=0, gamma=(1.0, 1.0), noise_std=0.0)
    always = AugmentConfig(
        brightness=0, contrast=0, gamma=(1.0, 1.0), noise_std=0.0, invert_grey=1.0
    )
    out = random_intensity(grey, np.random.default_rng(0), always)
    torch.testing.assert_close(out, 1.0 - grey)
    torch.testing.assert_close(random_intensity(colour, np.random.default_rng(0), always), colour)
    torch.testing.assert_close(random_intensity(grey, np.random.default_rng(0), flat), grey)
    # Off (the default): no extra random draw, so earlier training runs replay exactly.
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    random_intensity(grey, a, AugmentConfig())
    random_intensity(grey, b, AugmentConfig(invert_grey=0.0))
    assert a.random() == b.random()


def test_augment_from_a_config_mapping():
    from vlseg.config import TrainConfig

    cfg = AugmentConfig.from_mapping({"gamma": [0.5, 2.0], "invert_grey": 0.2})
    assert cfg.gamma == (0.5, 2.0) and cfg.invert_grey == 0.2 and cfg.scale == (0.85, 1.2)
    t = SegTransform(32, augment={"invert_grey": 0.5})
    assert t.augment == AugmentConfig(invert_grey=0.5)
    with pytest.raises(ValueError, match="unknown key.*invert"):
        TrainConfig(augment={"invert": 0.5})
    with pytest.raises(ValueError, match="invert_grey must be in"):
        TrainConfig(augment={"invert_grey": 2})
    with pytest.raises(ValueError, match="augment="):
        TrainConfig(augment="yes")
