"""Prompt vocabulary: recorded with checkpoints and adapters; answers name unfamiliar words."""

import numpy as np
import torch
import yaml

import vlseg
from vlseg.checkpoint import save_checkpoint
from vlseg.cli import main as cli_main
from vlseg.predictor import Segmenter
from vlseg.registry import build_model, model_config
from vlseg.vocabulary import unfamiliar, vocabulary_of, words


def _ct():
    return (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)


def test_words_and_unfamiliar():
    assert words("Segment the patient's LEFT kidney, 2nd-largest!") == [
        "segment", "the", "patient's", "left", "kidney", "nd", "largest",
    ]  # fmt: skip
    vocab = vocabulary_of(["segment the liver", "the left kidney", "the liver"])
    assert vocab == ["kidney", "left", "liver", "segment"]  # function words left out
    known = frozenset(vocab)
    assert unfamiliar("I need a mask of the hepar, please", known) == ["hepar"]
    assert unfamiliar("delineate the hepar and the Hepar", known) == ["delineate", "hepar"]
    assert unfamiliar("segment the liver", known) == []
    assert unfamiliar("anything at all", None) == []  # no recorded vocabulary: nothing flagged


def test_segmenter_names_unfamiliar_words_only_with_a_vocabulary():
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    model = build_model(cfg)
    plain = Segmenter(model, image_size=cfg.image_size).segment(_ct(), "the hepar")
    assert plain.unfamiliar == []
    seg = Segmenter(model, image_size=cfg.image_size, vocabulary=["liver", "spleen"])
    res = seg.segment(_ct(), ["the hepar", "the liver"])
    assert res[0].unfamiliar == ["hepar"] and res[1].unfamiliar == []
    assert "unfamiliar words: hepar" in repr(res[0])


def test_cli_records_a_vocabulary_that_load_uses(tiny_data, tmp_path, capsys):
    torch.manual_seed(0)
    cfg = model_config("tiny-test")
    ckpt = save_checkpoint(build_model(cfg), cfg, tmp_path / "ckpt")
    assert vlseg.load(ckpt).vocabulary is None  # recorded nothing: flags nothing
    assert cli_main(["vocabulary", "--data", str(tiny_data), "--into", str(ckpt)]) == 0
    vocab = yaml.safe_load((ckpt / "config.yaml").read_text())["vocabulary"]
    assert "liver" in vocab and "hepar" not in vocab  # "the hepar" is a held-out wording
    assert vlseg.load(ckpt).segment(_ct(), "the hepar").unfamiliar == ["hepar"]
    assert cli_main(["vocabulary", "--data", str(tiny_data), "--into", str(tmp_path)]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err


def test_shipped_default_records_its_training_vocabulary():
    seg = vlseg.load()
    assert {"liver", "spleen", "hyperdense", "melanoma"} <= seg.vocabulary
    assert not {"hepar", "lien"} & seg.vocabulary  # the held-out split's reserved words
