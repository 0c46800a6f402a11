"""Overlays, display sizes and mask files for chat replies."""

import numpy as np
import pytest

from vlseg.chat import render
from vlseg.data.io import load_mask


def _masks(h, w):
    a = np.zeros((h, w), bool)
    a[h // 4 : h // 2, w // 4 : w // 2] = True
    return [a, np.zeros((h, w), bool)]


@pytest.mark.parametrize("h, w, side", [(64, 48, 384), (500, 700, 700), (3000, 1500, 1024)])
def test_overlay_display_size(h, w, side):
    rgb = np.zeros((h, w, 3), np.uint8)
    out = render.render_overlay(
        rgb, _masks(h, w), ["a: 1 px", "b: not found"], ["#ff0000", "#00ff00"]
    )
    assert out.dtype == np.uint8 and max(out.shape[:2]) == side
    assert out.shape[0] / out.shape[1] == pytest.approx(h / w, rel=0.02)


def test_overlay_colours_the_mask_and_not_the_background():
    rgb = np.full((400, 400, 3), 100, np.uint8)
    masks = _masks(400, 400)
    out = render.render_overlay(rgb, masks, ["a", "b"], ["#ff0000", "#00ff00"])
    inside, outside = out[150, 150], out[350, 350]
    assert inside[0] > 150 and inside[1] < 100  # red blend
    assert (outside == 100).all()


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 masks, 1 legend"):
        render.render_overlay(np.zeros((8, 8, 3), np.uint8), _masks(8, 8), ["a"], ["#fff000"])


def test_mask_files_keep_resolution(tmp_path):
    masks = _masks(37, 53)
    paths = render.write_mask_files(masks, ["the liver", "Both kidneys / left?"], tmp_path)
    assert [p.name for p in paths] == ["mask-01-the-liver.png", "mask-02-both-kidneys-left.png"]
    np.testing.assert_array_equal(load_mask(paths[0]), masks[0])
    assert not list(tmp_path.glob(".tmp-*")), "atomic writes leave no temp files"


def test_colors_cycle():
    colors = render.colors_for([f"t{i}" for i in range(10)])
    assert len(set(colors.values())) == len(render.PALETTE)
