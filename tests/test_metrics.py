"""Tests for vlseg.metrics: hand-computed cases and agreement with MONAI / scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from vlseg.metrics import (
    SegmentationMeter,
    balanced_accuracy,
    binary_auroc,
    confusion_matrix,
    dice,
    hd95,
    iou,
    macro_auroc,
    recall_at_k,
    top1_accuracy,
)


def _mask(shape: tuple[int, int], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    """Bool mask with the given (y0, y1, x0, x1) boxes set (end exclusive)."""
    m = np.zeros(shape, dtype=bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def _blobs(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """(n, H, W) bool masks of smooth random blobs, some touching the image border."""
    out = []
    while len(out) < n:
        field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=rng.uniform(1.5, 4))
        m = field > rng.uniform(0.0, 0.15)
        if m.any():
            out.append(m)
    return np.stack(out)


# --- Dice / IoU -------------------------------------------------------------------------------


def test_dice_iou_hand_computed() -> None:
    pred = _mask((4, 5), (0, 2, 0, 2))  # 4 px
    target = _mask((4, 5), (0, 2, 1, 4))  # 6 px, overlap 2 px
    assert dice(pred, target) == pytest.approx(2 * 2 / (4 + 6))
    assert iou(pred, target) == pytest.approx(2 / 8)
    assert dice(pred, pred) == 1.0 and iou(pred, pred) == 1.0


def test_empty_conventions() -> None:
    empty, some = np.zeros((3, 3), bool), _mask((3, 3), (0, 1, 0, 1))
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    for a, b in [(empty, some), (some, empty)]:
        assert dice(a, b) == 0.0 and iou(a, b) == 0.0


def test_probabilities_and_tensors() -> None:
    probs = torch.tensor([[0.9, 0.6, 0.5], [0.1, 0.0, 1.0]], dtype=torch.bfloat16)
    target = torch.tensor([[1, 1, 1], [0, 0, 0]])
    # 0.5 is not strictly above the threshold: pred = {0.9, 0.6, 1.0} -> inter 2, union 4
    assert iou(probs, target) == pytest.approx(0.5)
    assert iou(probs, target, threshold=0.05) == pytest.approx(3 / 5)  # adds 0.5 and 0.1
    assert dice(probs.float().requires_grad_(), target) == pytest.approx(4 / 6)


def test_dice_iou_match_monai() -> None:
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(0)
    pred, target = _blobs(rng, (32, 40), 12), _blobs(rng, (32, 40), 12)
    pred[3] = False  # one empty prediction
    pred[5] = target[5] = False  # both empty
    p, t = torch.from_numpy(pred[:, None].astype(np.float32)), torch.from_numpy(target[:, None])
    ref_dice = monai_metrics.compute_dice(p, t.float(), include_background=True, ignore_empty=False)
    ref_iou = monai_metrics.compute_iou(p, t.float(), include_background=True, ignore_empty=False)
    ours_dice = [dice(a, b) for a, b in zip(pred, target, strict=True)]
    ours_iou = [iou(a, b) for a, b in zip(pred, target, strict=True)]
    # ratios of pixel counts, MONAI's in float32 (1 ulp ~ 6e-8; measured 1.4e-8)
    np.testing.assert_allclose(ours_dice, ref_dice[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(ours_iou, ref_iou[:, 0].numpy(), atol=1e-6)
    assert ours_dice[3] == 0.0 and ours_dice[5] == 1.0


def test_iou_matches_torchmetrics() -> None:
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(1)
    pred, target = _blobs(rng, (24, 24), 6), _blobs(rng, (24, 24), 6)
    for a, b in zip(pred, target, strict=True):
        ref = tmf.binary_jaccard_index(torch.from_numpy(a).int(), torch.from_numpy(b).int())
        assert iou(a, b) == pytest.approx(float(ref), abs=1e-6)


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.zeros((4, 4)), np.zeros((4, 5)), "shape"),
        (np.zeros((4, 4)), np.full((4, 4), 2), "binary"),
        (np.full((4, 4), 3.0), np.zeros((4, 4)), r"outside \[0, 1\]"),
        (np.zeros(4), np.zeros(4), "HxW"),
    ],
)
def test_mask_validation(pred: np.ndarray, target: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        iou(pred, target)


# --- HD95 -------------------------------------------------------------------------------------


def test_hd95_single_pixels() -> None:
    a, b = _mask((12, 12), (5, 6, 2, 3)), _mask((12, 12), (8, 9, 6, 7))  # offset (3, 4)
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(np.hypot(3 * 2.0, 4 * 0.5))
    assert hd95(a, a) == 0.0


def test_hd95_percentile_interpolates() -> None:
    # target: a 1-px line of 19 pixels; pred: the same line plus one pixel 10 px away. The 20
    # pred->target distances are nineteen 0s and one 10: linear 95th percentile = 0.05 * 10.
    target = _mask((16, 24), (0, 1, 0, 19))
    pred = target | _mask((16, 24), (10, 11, 0, 1))
    assert hd95(pred, target) == pytest.approx(0.5)


def test_hd95_shifted_squares() -> None:
    # 3x3 squares two columns apart: surface distances are {0 x3, 1 x2, 2 x3} each way.
    a, b = _mask((8, 10), (2, 5, 2, 5)), _mask((8, 10), (2, 5, 4, 7))
    assert hd95(a, b) == pytest.approx(2.0)


def test_hd95_empty_and_validation() -> None:
    empty, some = np.zeros((5, 5), bool), _mask((5, 5), (1, 3, 1, 3))
    assert np.isnan(hd95(empty, some)) and np.isnan(hd95(some, empty))
    assert np.isnan(hd95(empty, empty))
    with pytest.raises(ValueError, match="spacing"):
        hd95(some, some, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(some, some, spacing=(1.0, 0.0))


def _monai_hd95(pred: np.ndarray, target: np.ndarray, spacing) -> np.ndarray:
    """MONAI's per-sample HD95 of (B, ...) masks (NaN where a mask is empty)."""
    monai_metrics = pytest.importorskip("monai.metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about the empty masks
        return monai_metrics.compute_hausdorff_distance(
            torch.from_numpy(pred[:, None]).float(),
            torch.from_numpy(target[:, None]).float(),
            include_background=True,
            percentile=95,
            spacing=spacing,
        )[:, 0].numpy()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("spacing", [None, (1.0, 1.0), (0.7, 2.3)])
def test_hd95_matches_monai(seed: int, spacing: tuple[float, float] | None) -> None:
    rng = np.random.default_rng(seed)
    pred, target = _blobs(rng, (40, 56), 5), _blobs(rng, (40, 56), 5)
    pred[-1] = False  # empty prediction: NaN in both (MONAI's percentile of infs is NaN)
    ref = _monai_hd95(pred, target, spacing)
    ours = [hd95(a, b, spacing=spacing) for a, b in zip(pred, target, strict=True)]
    # MONAI's distances are float32: 1-2 ulps (<= 2.4e-7 relative, measured 1e-7) from ours
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)  # NaNs must line up too
    assert np.all(np.asarray(ours[:-1]) > 0) and np.isnan(ours[-1])


def test_hd95_3d_matches_monai() -> None:
    rng = np.random.default_rng(7)
    vols = [ndimage.gaussian_filter(rng.normal(size=(10, 16, 16)), 2) > 0.05 for _ in range(2)]
    ref = _monai_hd95(vols[0][None], vols[1][None], (2.5, 0.8, 0.8))[0]
    assert hd95(vols[0], vols[1], spacing=(2.5, 0.8, 0.8)) == pytest.approx(float(ref), rel=1e-6)


# --- SegmentationMeter ------------------------------------------------------------------------


def _meter_samples() -> tuple[np.ndarray, np.ndarray]:
    shape = (4, 5)
    preds = [
        _mask(shape, (0, 2, 0, 2)),  # == target: IoU 1
        _mask(shape, (0, 2, 0, 2)),  # inter 2 / union 8: IoU 0.25
        np.zeros(shape, bool),  # both empty: IoU 1 (union 0)
        _mask(shape, (0, 1, 0, 2)),  # inter 2 / union 4: IoU exactly 0.5
        np.zeros(shape, bool),  # empty vs 3 px: IoU 0
    ]
    targets = [
        _mask(shape, (0, 2, 0, 2)),
        _mask(shape, (0, 2, 1, 4)),
        np.zeros(shape, bool),
        _mask(shape, (0, 2, 0, 2)),
        _mask(shape, (3, 4, 0, 3)),
    ]
    return np.stack(preds), np.stack(targets)


def test_meter_hand_computed() -> None:
    preds, targets = _meter_samples()
    meter = SegmentationMeter()
    meter.update(preds[:2], targets[:2])  # a batch
    for p, t in zip(preds[2:], targets[2:], strict=True):  # then single samples
        meter.update(p, t)
    out = meter.compute()
    assert out["n"] == 5
    assert out["mIoU"] == pytest.approx((1 + 0.25 + 1 + 0.5 + 0) / 5)
    assert out["oIoU"] == pytest.approx((4 + 2 + 0 + 2 + 0) / (4 + 8 + 0 + 4 + 3))
    assert out["dice"] == pytest.approx((1 + 0.4 + 1 + 2 / 3 + 0) / 5)
    # IoU >= t: the sample at exactly 0.5 counts for prec@0.5
    assert out["prec@0.5"] == pytest.approx(3 / 5)
    assert out["prec@0.7"] == pytest.approx(2 / 5)
    assert out["prec@0.9"] == pytest.approx(2 / 5)
    defined = [hd95(preds[i], targets[i]) for i in (0, 1, 3)]  # both masks non-empty
    assert out["hd95_n"] == 3
    assert out["hd95"] == pytest.approx(np.mean(defined))
    assert out["hd95"] > 0


def test_meter_batch_equals_samples_and_reset() -> None:
    rng = np.random.default_rng(3)
    preds = rng.uniform(size=(6, 20, 20)).astype(np.float32)
    targets = _blobs(rng, (20, 20), 6)
    batched, single = SegmentationMeter(with_hd95=False), SegmentationMeter(with_hd95=False)
    batched.update(torch.from_numpy(preds), torch.from_numpy(targets))
    for p, t in zip(preds, targets, strict=True):
        single.update(p, t)
    assert batched.compute() == pytest.approx(single.compute())
    assert batched.compute()["mIoU"] == pytest.approx(
        np.mean([iou(p, t) for p, t in zip(preds, targets, strict=True)])
    )
    assert "hd95" not in batched.compute()
    batched.reset()
    with pytest.raises(RuntimeError, match="update"):
        batched.compute()


def test_meter_all_empty() -> None:
    meter = SegmentationMeter()
    meter.update(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool))
    out = meter.compute()
    assert out["oIoU"] == 1.0 and out["mIoU"] == 1.0 and out["dice"] == 1.0
    assert out["hd95_n"] == 0 and np.isnan(out["hd95"])


@pytest.mark.parametrize("spacing", [(0.7, 2.3), (0.6, 0.6)])  # anisotropic and square pixels
def test_meter_hd95_in_mm_matches_monai(spacing: tuple[float, float]) -> None:
    rng = np.random.default_rng(11)
    pred, target = _blobs(rng, (40, 56), 6), _blobs(rng, (40, 56), 6)
    pred[2] = False  # undefined: left out of both means
    meter = SegmentationMeter()
    meter.update(pred[:3], target[:3], spacing=spacing)  # one spacing for the batch
    for p, t in zip(pred[3:], target[3:], strict=True):
        meter.update(p, t, spacing=[spacing])  # one entry per sample
    out = meter.compute()
    ref_mm, ref_px = _monai_hd95(pred, target, spacing), _monai_hd95(pred, target, None)
    # MONAI and we both take exact Euclidean distance transforms and numpy's percentile; the
    # square-pixel shortcut (px * size) differs from a scaled transform by float rounding only.
    assert out["hd95_mm"] == pytest.approx(np.nanmean(ref_mm), rel=1e-6)
    assert out["hd95"] == pytest.approx(np.nanmean(ref_px), rel=1e-6)  # pixels, as before
    assert out["hd95_mm_n"] == out["hd95_n"] == 5


def test_meter_hd95_mm_only_over_samples_with_spacing() -> None:
    rng = np.random.default_rng(5)
    pred, target = _blobs(rng, (30, 30), 4), _blobs(rng, (30, 30), 4)
    spacings = [(0.5, 0.8), None, (1.2, 1.2), None]  # as a collated batch["spacing"]
    meter = SegmentationMeter()
    meter.update(pred, target, spacing=spacings)
    out = meter.compute()
    known = [0, 2]
    ref = [_monai_hd95(pred[i : i + 1], target[i : i + 1], spacings[i])[0] for i in known]
    # same tolerance reasoning as test_meter_hd95_in_mm_matches_monai
    assert out["hd95_mm"] == pytest.approx(np.mean(ref), rel=1e-6)
    assert out["hd95_mm_n"] == 2 and out["hd95_n"] == 4
    default = SegmentationMeter(spacing=(0.5, 0.8))  # the meter's spacing fills the gaps
    default.update(pred[:1], target[:1])
    assert default.compute()["hd95_mm"] == pytest.approx(ref[0], rel=1e-6)
    plain = SegmentationMeter()
    plain.update(pred, target)
    assert np.isnan(plain.compute()["hd95_mm"]) and plain.compute()["hd95_mm_n"] == 0
    with pytest.raises(ValueError, match="3 entries for a batch of 4"):
        meter.update(pred, target, spacing=[(1.0, 1.0)] * 3)
    with pytest.raises(ValueError, match="spacing"):
        meter.update(pred[0], target[0], spacing=(1.0, -1.0))
    assert meter.compute()["n"] == 4  # a rejected update changes nothing


# --- classification ---------------------------------------------------------------------------


def test_classification_hand_computed() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 0])
    cm = confusion_matrix(pred, labels, num_classes=3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 0], [1, 0, 1]])
    assert balanced_accuracy(pred, labels) == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    scores = np.eye(3)[pred] + 0.1  # one-hot-ish scores whose argmax is pred
    assert top1_accuracy(scores, labels) == pytest.approx(4 / 6)
    assert balanced_accuracy(scores, labels) == balanced_accuracy(pred, labels)


def test_binary_auroc_hand_computed() -> None:
    assert binary_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert binary_auroc([0.5, 0.5], [False, True]) == pytest.approx(0.5)  # tie counts one half
    assert binary_auroc([3.0, 1.0, 2.0], [1, 0, 1]) == 1.0
    assert np.isnan(binary_auroc([0.1, 0.2], [1, 1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_sklearn(seed: int) -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n, c = 200, 5
    labels = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    logits[:20] = np.round(logits[:20])  # some ties
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    np.testing.assert_array_equal(
        confusion_matrix(pred, labels, c), skm.confusion_matrix(labels, pred, labels=range(c))
    )
    assert top1_accuracy(logits, labels) == pytest.approx(skm.accuracy_score(labels, pred))
    assert balanced_accuracy(pred, labels) == pytest.approx(
        skm.balanced_accuracy_score(labels, pred), abs=1e-12
    )
    ref = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert macro_auroc(torch.from_numpy(probs), labels) == pytest.approx(ref, abs=1e-12)
    present = labels == 2
    ref_bin = skm.roc_auc_score(present, logits[:, 2])
    assert binary_auroc(logits[:, 2], present) == pytest.approx(ref_bin, abs=1e-12)


def test_balanced_accuracy_class_only_predicted() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    labels, pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])  # class 2 never true
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = skm.balanced_accuracy_score(labels, pred)
    assert balanced_accuracy(pred, labels) == pytest.approx(ref) == pytest.approx(0.75)


def test_macro_auroc_skips_absent_class() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    scores = rng.uniform(size=(50, 4))
    labels = rng.choice([0, 1, 3], size=50)  # class 2 absent: no positives
    expected = np.mean([skm.roc_auc_score(labels == k, scores[:, k]) for k in (0, 1, 3)])
    assert macro_auroc(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(macro_auroc(scores[:3], np.zeros(3, dtype=int)))


def test_classification_validation() -> None:
    with pytest.raises(ValueError, match="labels has 2 entries"):
        top1_accuracy(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="class id 4"):
        macro_auroc(np.zeros((2, 3)), np.array([0, 4]))
    with pytest.raises(ValueError, match="num_classes=2"):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), num_classes=2)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        top1_accuracy(np.zeros(3), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="1-D integer"):
        balanced_accuracy(np.array([0, 1]), np.array([0.5, 1.0]))


# --- retrieval --------------------------------------------------------------------------------


def _brute_recall(sim: np.ndarray, rel: np.ndarray, k: int) -> float:
    hits = []
    for q in range(sim.shape[0]):
        ranked = sorted(range(sim.shape[1]), key=lambda i, q=q: (-sim[q, i], i))
        hits.append(any(rel[q, i] for i in ranked[:k]))
    return float(np.mean(hits))


def test_recall_at_k_hand_computed() -> None:
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]])
    out = recall_at_k(sim, np.array([2, 2]), ks=(1, 2, 5))
    # query 0: target ranks second; query 1: first. k=5 is clamped to the 3-item gallery.
    assert out == {"R@1": 0.5, "R@2": 1.0, "R@5": 1.0}
    rel = np.array([[False, True, True], [True, False, False]])
    assert recall_at_k(sim, rel, ks=(1, 2)) == {"R@1": 0.0, "R@2": 0.5}


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_at_k_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q, n = 30, 40
    sim = rng.normal(size=(q, n))
    idx = rng.integers(0, n, size=q)
    one_hot = np.zeros((q, n), bool)
    one_hot[np.arange(q), idx] = True
    multi = one_hot | (rng.uniform(size=(q, n)) < 0.05)
    ks = (1, 5, 10)
    ours_idx = recall_at_k(torch.from_numpy(sim), idx, ks=ks)
    ours_multi = recall_at_k(sim, multi, ks=ks)
    for k in ks:
        assert ours_idx[f"R@{k}"] == pytest.approx(_brute_recall(sim, one_hot, k))
        assert ours_multi[f"R@{k}"] == pytest.approx(_brute_recall(sim, multi, k))
        assert ours_multi[f"R@{k}"] >= ours_idx[f"R@{k}"]
    assert ours_idx["R@1"] < ours_idx["R@10"]


def test_recall_at_k_validation() -> None:
    sim = np.zeros((2, 3))
    with pytest.raises(ValueError, match="no relevant"):
        recall_at_k(sim, np.array([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="gallery index 3"):
        recall_at_k(sim, np.array([0, 3]))
    with pytest.raises(ValueError, match="ks must be >= 1"):
        recall_at_k(sim, np.array([0, 1]), ks=(0,))
    with pytest.raises(ValueError, match=r"\(Q, N\)"):
        recall_at_k(sim, np.ones((3, 3), bool))
