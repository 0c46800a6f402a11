"""Honest answers: presence calibration, the unsure band, the out-of-domain verdict."""

import numpy as np
import pytest
import torch

from vlseg.calibration import expected_calibration_error, fit_calibration
from vlseg.chat.replies import describe
from vlseg.ood import OODDetector, fit_ood, ood_features
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


def test_ood_feature_kinds_and_fits_saved_before_kinds_existed(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(3, 8, s, s, generator=g) for s in (16, 8, 4, 2)]
    means = ood_features(maps, "means")
    layout = ood_features(maps, "means+layout")
    assert means.shape == (3, 32) and layout.shape == (3, 32 + 8 * 4)
    np.testing.assert_allclose(layout[:, :32], means, atol=1e-6)  # the means block, then layout
    np.testing.assert_allclose(np.linalg.norm(layout[:, 32:], axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="feature kind"):
        ood_features(maps, "gram")
    rng = np.random.default_rng(0)
    det = fit_ood(rng.normal(0, 1, (200, 64)))
    assert det.features == "means+layout"
    det.save(tmp_path)
    assert OODDetector.load(tmp_path).features == "means+layout"
    # a fit written without the kind (earlier releases) is a "means" fit
    old = fit_ood(rng.normal(0, 1, (200, 32)), features="means")
    save_file(
        {"mean": torch.from_numpy(old.mean), "precision": torch.from_numpy(old.precision)},
        str(tmp_path / "ood.safetensors"),
    )
    again = OODDetector.load(tmp_path)
    assert again.features == "means"
    np.testing.assert_allclose(again.score_maps(maps), old.score(means), rtol=1e-6)


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
    feats = ood_features(seg.encode([_img(i) for i in range(6)]).features.maps)
    seg.ood = fit_ood(feats)
    seg.serving = ServingConfig(ood_threshold=-1.0)  # every image is beyond it
    res = seg.segment(_img(), "the liver")
    assert res.verdict == "out-of-domain" and res.area_px == 0 and res.ood_score is not None
    assert "unlike what this model was trained on" in describe(res)
    seg.serving = ServingConfig(ood_threshold=1e9)
    assert seg.segment(_img(), "the liver").verdict in ("present", "absent")


def test_cli_calibrate_records_serving_and_ood_in_the_checkpoint(tiny_data, tmp_path, capsys):
    import yaml

    import vlseg
    from vlseg.checkpoint import save_checkpoint
    from vlseg.cli import main as cli_main

    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    save_checkpoint(build_model(cfg), cfg, tmp_path / "ck")
    rc = cli_main(
        [
            "calibrate",
            "--model",
            str(tmp_path / "ck"),
            "--data",
            str(tiny_data),
            "--limit",
            "40",
            "--report",
            str(tmp_path / "rep"),
            "--allow-small",
        ]
    )
    assert rc == 0
    assert "presence calibration" in capsys.readouterr().out
    serving = yaml.safe_load((tmp_path / "ck" / "config.yaml").read_text())["serving"]
    assert serving["calibration"]["method"] == "temperature"
    assert serving["unsure"] == [0.2, 0.8] and serving["ood_threshold"] > 0
    assert (tmp_path / "ck" / "ood.safetensors").is_file()
    assert (tmp_path / "rep" / "reliability_val.png").is_file()
    seg = vlseg.load(tmp_path / "ck")
    assert seg.ood is not None and seg.serving.calibration == serving["calibration"]
    res = seg.segment(next((tiny_data / "images").glob("ct_*.png")), "the liver")
    assert res.ood_score is not None and res.verdict in (
        "present",
        "absent",
        "unsure",
        "out-of-domain",
    )


def test_cli_writes_the_heldout_family(tmp_path):
    from vlseg.cli import main as cli_main
    from vlseg.data.manifest import read_manifest

    rc = cli_main(
        ["phantoms", "--family", "heldout", "--out", str(tmp_path / "f"), "--n", "4",
         "--size", "64", "--seed", "3", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    recs = read_manifest(tmp_path / "f")
    assert recs and all(r.id.startswith("hf_") for r in recs)
    with pytest.raises(SystemExit, match="own appearance"):
        cli_main(["phantoms", "--family", "heldout", "--out", str(tmp_path / "g"),
                  "--appearance", "randomized"])  # fmt: skip


def test_chat_classification_warns_on_an_out_of_domain_image(tmp_path):
    from vlseg.chat import ChatService, ChatSession

    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    seg = Segmenter(
        build_model(cfg),
        image_size=cfg.image_size,
        serving=ServingConfig(labels=["melanoma", "nevus"], ood_threshold=-1.0),
    )
    svc = ChatService(seg, workdir=tmp_path)
    session = ChatSession()
    path = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(_img()).save(path)
    svc.respond(session, "", [str(path)])
    assert (
        "unlike what this model was trained on" not in svc.respond(session, "what is this?").reply
    )
    seg.ood = fit_ood(ood_features(seg.encode([_img(i) for i in range(6)]).features.maps))
    svc.respond(session, "", [str(path)])  # re-encoded: now with an out-of-domain score
    assert seg.out_of_domain(session.encoded) == [True]
    assert "unlike what this model was trained on" in svc.respond(session, "what is this?").reply


def test_evaluate_answers_out_of_domain_as_users_get_it(tiny_data):
    # `vlseg eval` passes the model's out-of-domain fit: a flagged image is answered
    # "out-of-domain" with an empty mask (Dice 0 on positives), as Segmenter.segment answers.
    from vlseg.data.manifest import ManifestDataset
    from vlseg.evaluation import evaluate

    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    seg = Segmenter(build_model(cfg), image_size=cfg.image_size)
    vis = seg.model.vision
    ds = ManifestDataset(
        tiny_data, "test", image_size=seg.image_size, mean=vis.mean, std=vis.std, prompt="all"
    )
    seg.ood = fit_ood(ood_features(seg.encode([_img(i) for i in range(6)]).features.maps))
    verdicts = []

    def keep(rec, res, target, positive):
        verdicts.append((res.verdict, res.ood_score, int(res.mask.sum())))

    flag_all = ServingConfig(threshold=0.0, ood_threshold=-1.0)
    out = evaluate(seg.model, ds, serving=flag_all, limit=8, on_item=keep, ood=seg.ood)
    assert verdicts
    assert all(v == "out-of-domain" and s is not None and a == 0 for v, s, a in verdicts)
    assert out["dice"] == 0.0
    verdicts.clear()
    evaluate(seg.model, ds, serving=flag_all, limit=8, on_item=keep)  # no fit: no check
    assert all(v != "out-of-domain" and s is None for v, s, _ in verdicts)


def test_calibrate_refuses_too_little_data_and_writes_nothing(tiny_data, tmp_path):
    from vlseg.calibration import calibrate_checkpoint
    from vlseg.checkpoint import save_checkpoint

    cfg = model_config("tiny-test")
    save_checkpoint(build_model(cfg), cfg, tmp_path / "ck")
    before = (tmp_path / "ck" / "config.yaml").read_text()
    with pytest.raises(ValueError, match="too few to fit a calibration.*nothing was written"):
        calibrate_checkpoint(tmp_path / "ck", tiny_data, limit=20, progress=False)
    assert (tmp_path / "ck" / "config.yaml").read_text() == before
    assert not (tmp_path / "ck" / "ood.safetensors").exists()
    with pytest.raises(ValueError, match="not a checkpoint directory.*cp -r"):
        calibrate_checkpoint("phantom-tiny", tiny_data, limit=20, progress=False)
