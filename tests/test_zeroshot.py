"""Zero-shot classification: template ensembles, caching, probabilities, CLI."""

import numpy as np
import pytest
import torch

from prompts import list_label_sets, list_templates, load_labels, load_templates
from vlseg.cli import main as cli_main
from vlseg.predictor import Segmenter
from vlseg.registry import build_model, model_config


@pytest.fixture(scope="module")
def seg():
    torch.manual_seed(0)
    return Segmenter(build_model(model_config("tiny-test")), image_size=64)


def test_template_and_label_sets_load():
    assert {"dermoscopy", "ct", "generic"} <= set(list_templates())
    assert {"ham10000", "pad-ufes-20", "phantom-dermoscopy"} <= set(list_label_sets())
    assert len(load_labels("ham10000")) == 7 and len(load_labels("pad-ufes-20")) == 6
    assert all("{}" in t for t in load_templates("dermoscopy"))
    assert load_templates(["x {} y"]) == ["x {} y"]
    with pytest.raises(ValueError, match="available: .*dermoscopy"):
        load_templates("nope")
    with pytest.raises(ValueError, match="exactly one"):
        load_templates(["no placeholder"])


def test_classify_probabilities_match_manual_computation(seg):
    img = (np.random.default_rng(0).random((50, 60)) * 255).astype(np.uint8)
    labels = ["melanoma", "nevus", "dermatofibroma"]
    res = seg.classify(img, labels, "dermoscopy")
    assert res.labels == labels and res.probs.shape == (3,)
    assert abs(res.probs.sum() - 1) < 1e-5 and res.top == labels[int(res.probs.argmax())]
    # The same numbers by hand: template-averaged, normalised text; normalised image.
    temps = load_templates("dermoscopy")
    cls = []
    for lab in labels:
        e = seg.text_embedding([t.format(lab) for t in temps]).mean(0)
        cls.append(e / np.linalg.norm(e))
    logits = 100 * seg.image_embedding(img) @ np.stack(cls).T
    ref = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    # logits are 100 x fp32 cosines (error ~1e-7 -> ~1e-5 relative in probs); measured 1e-12
    np.testing.assert_allclose(res.probs, ref, rtol=1e-4, atol=1e-6)
    # Class embeddings are cached per (labels, templates).
    assert (tuple(labels), tuple(temps)) in seg._class_cache


def test_classify_uses_cached_image_and_batches(seg):
    img = np.zeros((40, 40), np.uint8)
    seg.set_image(img)
    calls = seg.encoder_calls
    seg.classify(labels=["a", "b"])
    assert seg.encoder_calls == calls
    out = seg.classify([img, img + 50], ["a", "b"])
    assert len(out) == 2


def test_classify_rejects_bad_labels(seg):
    with pytest.raises(ValueError, match="at least two labels"):
        seg.classify(np.zeros((8, 8), np.uint8), ["melanoma"])
    with pytest.raises(ValueError, match="repeat 'A CT SCAN'"):
        seg.classify(np.zeros((8, 8), np.uint8), ["a CT scan", "a dermoscopy photo", "A CT SCAN "])
    with pytest.raises(TypeError, match=r"list\(mapping.values\(\)\)"):
        seg.classify(np.zeros((8, 8), np.uint8), {"a": "a CT scan", "b": "a dermoscopy photo"})


def test_eval_classify_cli(tiny_data, tmp_path, capsys):
    import vlseg.checkpoint as ck

    ck.save_checkpoint(
        build_model(model_config("tiny-test")), model_config("tiny-test"), tmp_path / "m"
    )
    rc = cli_main(
        [
            "eval-classify",
            "--model",
            str(tmp_path / "m"),
            "--data",
            str(tiny_data),
            "--split",
            "train",
            "--modality",
            "dermoscopy",
            "--labels",
            "phantom-dermoscopy",
            "--templates",
            "dermoscopy",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 0
    assert (tmp_path / "o" / "confusion.png").is_file()
    assert "balanced accuracy" in capsys.readouterr().out


def test_label_set_from_a_yaml_file(tmp_path):
    from vlseg.cli import _labels

    path = tmp_path / "mine.yaml"
    path.write_text("mel: melanoma\nnv: a benign nevus\n")
    assert _labels(str(path)) == (["mel", "nv"], ["melanoma", "a benign nevus"])
    assert _labels("phantom-ct")[0] == list(load_labels("phantom-ct"))
    assert _labels("melanoma, nevus") == (["melanoma", "nevus"], ["melanoma", "nevus"])


def test_cli_names_the_label_sets_for_a_mistyped_one(tmp_path):
    from vlseg.cli import main as cli_main

    with pytest.raises(SystemExit, match="label sets: .*phantom-dermoscopy"):
        cli_main(["classify", "--image", str(tmp_path / "x.png"), "--labels", "phantom-derm"])
    with pytest.raises(SystemExit):
        cli_main(["eval", "--data", str(tmp_path), "--limit", "0"])
