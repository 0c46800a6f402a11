"""Edge-aware refinement of mask probabilities (`vlseg.refine`, `serving.refine`)."""

import numpy as np
import pytest
import torch

from vlseg.refine import (
    DEFAULT,
    check_refine,
    fast_step,
    guide_of,
    guided_filter,
    radius_px,
    refine_probabilities,
)
from vlseg.serving import ServingConfig


def _square_scene(size=64, lo=16, hi=40):
    """A bright square on a dark background, and a blurred, shifted guess of it (what an
    upsampled coarse decoder gives)."""
    img = np.zeros((size, size), dtype=np.uint8)
    img[lo:hi, lo:hi] = 200
    truth = img > 0
    yy, xx = np.mgrid[:size, :size]
    c = (lo + hi) / 2 + 2.0  # off by two pixels
    d = np.maximum(np.abs(yy - c), np.abs(xx - c)) - (hi - lo) / 2
    guess = 1.0 / (1.0 + np.exp(d / 3.0))  # soft edges, ~3 px wide
    return img, truth, torch.from_numpy(guess.astype(np.float32))[None]


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_refinement_snaps_a_soft_mask_to_the_image_edges():
    img, truth, guess = _square_scene()
    before = guess[0].numpy() > 0.5
    out = refine_probabilities(guess, guide_of(img), (8, 8), DEFAULT)  # 2 px radius
    after = out[0].numpy() > 0.5
    assert _dice(after, truth) > _dice(before, truth) + 0.03
    assert out.min() >= 0 and out.max() <= 1 and out.shape == guess.shape


def test_flat_image_leaves_the_map_smoothed_not_moved():
    guide = torch.full((32, 32), 0.5)
    p = torch.zeros(1, 32, 32)
    p[0, 8:24, 8:24] = 1.0
    q = refine_probabilities(p, guide, (8, 8), DEFAULT)
    # no edge to follow: a box-smoothed copy (same mass, same centre)
    assert q.sum().item() == pytest.approx(p.sum().item(), rel=0.02)
    assert ((q[0] > 0.5) == (p[0] > 0.5)).float().mean() > 0.97


def test_only_the_box_around_the_finding_changes_and_equals_the_full_filter():
    img, _, guess = _square_scene(size=96, lo=30, hi=50)
    guess = guess.clone()
    guess[guess < 0.02] = 0.0  # nothing outside the finding's neighbourhood
    guide = guide_of(img)
    out = refine_probabilities(guess, guide, (24, 24), DEFAULT)
    r = radius_px((96, 96), (24, 24), DEFAULT["radius"])
    full = guided_filter(guide, guess[0], r, DEFAULT["eps"]).clamp(0, 1)
    rows, cols = torch.nonzero(guess[0] > 0.01, as_tuple=True)
    inner = (
        slice(int(rows.min()), int(rows.max()) + 1),
        slice(int(cols.min()), int(cols.max()) + 1),
    )
    torch.testing.assert_close(out[0][inner], full[inner])
    far = torch.ones_like(guess[0], dtype=torch.bool)
    far[max(int(rows.min()) - 2 * r, 0) :, max(int(cols.min()) - 2 * r, 0) :] = False
    assert torch.equal(out[0][far], guess[0][far])  # untouched outside the box


def test_empty_maps_and_no_spec_are_returned_as_is():
    p = torch.zeros(2, 16, 16)
    assert refine_probabilities(p, torch.rand(16, 16), (4, 4), DEFAULT) is not None
    assert torch.equal(refine_probabilities(p, torch.rand(16, 16), (4, 4), DEFAULT), p)
    q = torch.rand(1, 16, 16)
    assert refine_probabilities(q, torch.rand(16, 16), (4, 4), None) is q
    with pytest.raises(ValueError, match="guides of shape"):
        refine_probabilities(q, torch.rand(8, 8), (4, 4), DEFAULT)


def test_radius_scales_with_the_image():
    assert radius_px((256, 256), (32, 32), 0.5) == 4
    assert radius_px((1024, 768), (32, 32), 0.5) == 16
    assert radius_px((32, 32), (32, 32), 0.5) == 1


def test_serving_config_validates_and_round_trips():
    assert ServingConfig().refine == DEFAULT  # on by default
    assert ServingConfig(refine=None).refine is None
    cfg = ServingConfig.from_dict({"refine": {"method": "guided", "radius": 1, "eps": 0.01}})
    assert ServingConfig.from_dict(cfg.to_dict()).refine == {
        "method": "guided",
        "radius": 1.0,
        "eps": 0.01,
    }
    with pytest.raises(ValueError, match="method: guided"):
        check_refine({"method": "crf"})
    with pytest.raises(ValueError, match="unknown keys"):
        check_refine({"method": "guided", "sigma": 2})
    with pytest.raises(ValueError, match="must be > 0"):
        check_refine({"method": "guided", "radius": 0})


def test_fast_filter_on_large_images_follows_the_exact_one():
    img, truth, guess = _square_scene(size=256, lo=64, hi=160)
    guide = guide_of(img)
    exact = guided_filter(guide, guess[0], 8, 1e-3).clamp(0, 1)
    fast = guided_filter(guide, guess[0], 8, 1e-3, step=4).clamp(0, 1)
    assert (exact - fast).abs().mean() < 0.01
    agree = ((exact > 0.5) == (fast > 0.5)).float().mean()
    assert agree > 0.995
    assert _dice(fast.numpy() > 0.5, truth) > _dice(guess[0].numpy() > 0.5, truth)
    # the exact filter up to a 3 px radius (what a 256 px phantom through phantom-tiny gets)
    assert [fast_step(r) for r in (1, 2, 3, 4, 8)] == [1, 1, 1, 2, 4]
