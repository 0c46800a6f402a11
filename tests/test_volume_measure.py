"""Measurements on volumes: RECIST-style diameters, 3-D components, the agreeing presence score."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from vlseg.volume import (
    agreeing_score,
    axial_diameters,
    bounding_box,
    measure_components,
    remove_specks,
)


def _disk(h, w, cy, cx, ry, rx):
    yy, xx = np.mgrid[:h, :w]
    return ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0


def test_diameters_of_an_ellipse_match_its_axes():
    m = _disk(200, 200, 100, 100, 20, 40)  # 80 px wide, 40 px tall
    long, short = axial_diameters(m)
    assert long == pytest.approx(80, abs=2.5)
    assert short == pytest.approx(40, abs=2.5)


def test_diameters_use_anisotropic_spacing():
    # 40 x 40 px square region with pixels 0.5 mm tall and 2 mm wide: 20 mm x 80 mm
    m = np.zeros((100, 100), bool)
    m[30:70, 30:70] = True
    long, short = axial_diameters(m, (0.5, 2.0))
    assert long == pytest.approx(math.hypot(20, 80), rel=1e-6)  # the diagonal of the box
    assert 19.0 <= short <= 21.0  # the chord perpendicular to that diagonal, near-diagonal


def test_diameters_of_a_rotated_bar():
    yy, xx = np.mgrid[:300, :300].astype(float)
    t = np.deg2rad(30)
    u = (xx - 150) * math.cos(t) + (yy - 150) * math.sin(t)
    v = -(xx - 150) * math.sin(t) + (yy - 150) * math.cos(t)
    bar = (np.abs(u) <= 60) & (np.abs(v) <= 10)  # 120 x 20
    long, short = axial_diameters(bar, (1.0, 1.0))
    assert long == pytest.approx(math.hypot(120, 20), abs=3)
    assert short == pytest.approx(20, abs=3)


def test_single_pixel_and_empty():
    m = np.zeros((5, 5), bool)
    assert axial_diameters(m) == (0.0, 0.0)
    m[2, 2] = True
    long, short = axial_diameters(m, (1.0, 1.0))
    assert long == pytest.approx(math.sqrt(2))
    assert short <= long


def test_agreeing_score_needs_two_adjacent_slices():
    assert agreeing_score(np.array([0.1, 0.95, 0.1, 0.2])) == pytest.approx(0.1)
    assert agreeing_score(np.array([0.1, 0.95, 0.9, 0.2])) == pytest.approx(0.9)
    assert agreeing_score(np.array([0.7])) == pytest.approx(0.7)
    assert agreeing_score(np.array([])) == 0.0


def test_specks_removed_and_components_ordered_by_size():
    m = np.zeros((6, 20, 20), bool)
    m[1:4, 2:8, 2:8] = True  # 108 voxels
    m[2:5, 12:15, 12:15] = True  # 27 voxels
    m[0, 18, 18] = True  # a speck
    out, labels, n = remove_specks(m, 5)
    assert n == 2 and not out[0, 18, 18]
    assert (labels == 1).sum() == 108 and (labels == 2).sum() == 27
    vols, diam, where = measure_components(labels, n, (2.0, 1.0, 1.0))
    assert vols == pytest.approx([108 * 2 / 1000, 27 * 2 / 1000])
    assert diam[0][0] == pytest.approx(math.hypot(6, 6))
    assert 1 <= where[0] <= 3 and 2 <= where[1] <= 4


def test_diagonal_neighbours_are_one_component():
    m = np.zeros((3, 3, 3), bool)
    m[0, 0, 0] = m[1, 1, 1] = m[2, 2, 2] = True
    assert remove_specks(m, 1)[2] == 1


def test_flat_components_wider_than_two_slices_are_dropped():
    from vlseg.volume import drop_flat_components

    m = np.zeros((5, 40, 40), bool)
    m[1:4, 2:12, 2:12] = True  # a real finding over three slices
    m[2, 20:32, 20:32] = True  # 12 mm wide on one 3 mm slice: a false alarm
    m[2, 35:37, 35:37] = True  # 2 mm wide on one slice: thinner than the slices, kept
    _, labels, n = remove_specks(m, 1)
    out, labels, n = drop_flat_components(m, labels, n, (3.0, 1.0, 1.0))
    assert n == 2 and out[1:4, 2:12, 2:12].all() and not out[2, 20:32, 20:32].any()
    assert out[2, 35:37, 35:37].all()


def test_smoothing_over_slices_mixes_neighbours_and_keeps_constant_stacks():
    import torch

    from vlseg.volume import smooth_over_slices, z_smoothing_weight

    flat = torch.full((4, 1, 2, 2), 3.0)
    assert torch.allclose(smooth_over_slices(flat, 0.25), flat)
    spike = torch.zeros(5, 1, 1, 1)
    spike[2] = 4.0
    out = smooth_over_slices(spike, 0.25)[:, 0, 0, 0].tolist()
    assert out == pytest.approx([0.0, 1.0, 2.0, 1.0, 0.0])
    assert z_smoothing_weight(None, 256, 32) == 0.0
    assert z_smoothing_weight((5.0, 1.5, 1.5), 256, 32) == pytest.approx(0.25)  # 12 mm cells
    assert z_smoothing_weight((24.0, 1.5, 1.5), 256, 32) == pytest.approx(0.125)


def test_bounding_box_holds_every_voxel_and_nothing_more():
    rng = np.random.default_rng(0)
    for _ in range(100):
        m = np.zeros(tuple(int(v) for v in rng.integers(1, 9, 3)), bool)
        for _ in range(int(rng.integers(0, 4))):
            m[tuple(int(rng.integers(0, d)) for d in m.shape)] = True
        box = bounding_box(m)
        if not m.any():
            assert m[box].size == 0
            continue
        nz = np.argwhere(m)
        lows, highs = nz.min(0), nz.max(0)
        assert box == tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(lows, highs, strict=True))
        assert m[box].sum() == m.sum()


def test_components_measured_in_the_box_match_the_whole_volume():
    """segment_volume labels and measures inside the finding's box; the slice indices it
    reports are shifted back to the whole volume's."""
    vol = np.zeros((12, 40, 40), bool)
    vol[3:7, 5:15, 5:12] = True
    vol[8:10, 20:30, 25:35] = True
    box = bounding_box(vol)
    whole = measure_components(*remove_specks(vol, 1)[1:], (2.0, 1.0, 1.0))
    vols, diam, where = measure_components(*remove_specks(vol[box], 1)[1:], (2.0, 1.0, 1.0))
    assert vols == whole[0] and diam == whole[1]
    assert [k + box[0].start for k in where] == whole[2]


def test_diameter_ties_do_not_depend_on_float_noise_or_slice_order():
    """Ties (several longest chords; several slices with the same longest diameter) are broken
    by what is measured, not by float noise or the order slices are stored in (a resliced
    sagittal series reverses the slices of its axial twin)."""
    region = np.zeros((24, 24), bool)
    region[5:13, 5:11] = True  # two diagonals tie for the longest diameter
    region[8, 11] = True  # a bump that makes their perpendiculars differ
    want = axial_diameters(region, (0.8, 0.8))
    # float noise in a spacing (DICOM positions) picks the same chord among the tied ones
    for sp in ((0.8 - 1e-14, 0.8), (0.8, 0.8 + 1e-14)):
        assert axial_diameters(region, sp) == pytest.approx(want, abs=1e-9)
    stack = np.zeros((5, 24, 24), bool)
    stack[:] = ndimage.binary_erosion(region)
    stack[1] = stack[2] = region  # slices 1 and 2 tie; 2 is the component's middle
    labels = stack.astype(np.int32)
    _, diam, where = measure_components(labels, 1, (3.0, 0.8, 0.8))
    _, diam_r, where_r = measure_components(labels[::-1].copy(), 1, (3.0, 0.8, 0.8))
    assert diam[0] == pytest.approx(diam_r[0]) and where_r[0] == 4 - where[0] == 2
