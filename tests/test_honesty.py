"""Honest answers: presence calibration, the unsure band, the out-of-domain verdict."""

import numpy as np
import pytest
import torch

from vlseg.calibration import expected_calibration_error, fit_calibration
from vlseg.chat.replies import describe
from vlseg.ood import OODDetector, fit_ood
from vlseg.predictor import Segmenter
from vlseg.registry import build_model, model_config
from vlseg.serving import ServingConfig


def test_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-z / 2.5))  # true probability sigmoid(z / 2.5)
    cal = fit_calibration(z, y, "temperature")
    assert cal["temperature"] == pytest.approx(2.5, rel=0.05)
    raw, fixed = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-z / cal["temperature"]))
    assert expected_calibration_error(fixed, y) < 0.02 < expected_calibration_error(raw, y)
    platt = fit_calibration(z, y, "platt")
    assert platt["a"] == pytest.approx(0.4, rel=0.06) and abs(platt["b"]) < 0.1
    with pytest.raises(ValueError, match="both present and absent"):
        fit_calibration(z, np.ones_like(y), "temperature")


def test_ood_fit_scores_far_points_higher_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (400, 16))
    det = fit_ood(train)
    near, far = det.score(rng.normal(0, 1, (50, 16))), det.score(rng.normal(3, 1, (50, 16)))
    assert near.max() < far.min()
    det.save(tmp_path)
    again = OODDetector.load(tmp_path)
    np.testing.assert_array_equal(again.score(train[:5]), det.score(train[:5]))
    assert OODDetector.load(tmp_path / "none") is None
    with pytest.raises(ValueError, match="dimensions"):
        det.score(np.zeros((1, 8)))


def _img(seed=0):
    return (np.random.default_rng(seed).random((40, 48)) * 255).astype(np.uint8)


def test_verdicts_unsure_and_out_of_domain():
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    seg = Segmenter(build_model(cfg), image_size=cfg.image_size, serving=ServingConfig())
    res = seg.segment(_img(), "the liver")
    assert res.verdict in ("present", "absent") and res.uncertainty.shape == (40, 48)
    assert res.uncertainty.max() <= 1.0 and res.ood_score is None
    seg.serving = ServingConfig(unsure=(0.0, 1.0))  # every score falls in the band
    res = seg.segment(_img(), "the liver")
    assert res.verdict == "unsure" and not res.present and "unsure" in describe(res)
    feats = seg.encode([_img(i) for i in range(6)]).pooled
    seg.ood = fit_ood(feats)
    seg.serving = ServingConfig(ood_threshold=-1.0)  # every image is beyond it
    res = seg.segment(_img(), "the liver")
    assert res.verdict == "out-of-domain" and res.area_px == 0 and res.ood_score is not None
    assert "unlike what this model was trained on" in describe(res)
    seg.serving = ServingConfig(ood_threshold=1e9)
    assert seg.segment(_img(), "the liver").verdict in ("present", "absent")
