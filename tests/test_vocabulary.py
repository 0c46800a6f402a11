"""Prompt vocabulary: recorded with checkpoints and adapters; answers name unfamiliar words."""

import numpy as np
import torch
import yaml

import vlseg
from vlseg.checkpoint import save_checkpoint
from vlseg.cli import main as cli_main
from vlseg.predictor import Segmenter
from vlseg.registry import build_model, model_config
from vlseg.vocabulary import parse, unfamiliar, vocabulary_of, words


def _ct():
    return (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)


def test_words_and_unfamiliar():
    assert words("Segment the patient’s LEFT kidney, 2nd-largest L3 (T2)!") == [
        "segment", "the", "patient", "left", "kidney", "largest",
    ]  # fmt: skip
    assert words("the liver's lesion; hıgado हृदय") == [
        "the", "liver", "lesion", "hıgado", "हृदय",
    ]  # fmt: skip
    assert words("hígado") == ["hígado"]  # decomposed accents are one word (NFC)
    vocab = vocabulary_of(["segment the liver", "the left kidney", "the liver"])
    assert vocab == "kidney left liver"  # function and request words left out
    known = parse(vocab)
    assert unfamiliar("I need a mask of the hepar, please", known) == ["hepar"]
    assert unfamiliar("delineate the hepar and the Hepar", known) == ["hepar"]
    assert unfamiliar("outline the hepar and the lien", known) == ["hepar", "lien"]
    for ordinary in [
        "segment the liver",
        "I'd like a mask of the liver’s left kidney",
        "what about the kidney as well, thanks",
        "now the liver too",
    ]:
        assert unfamiliar(ordinary, known) == [], ordinary
    assert unfamiliar("anything at all", None) == []  # no recorded vocabulary: nothing flagged
    assert parse(["a", "b"]) == parse("a b") == {"a", "b"} and parse(None) is None


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
    cfg_path = ckpt / "config.yaml"
    meta = yaml.safe_load(cfg_path.read_text())
    cfg_path.write_text(yaml.safe_dump({**meta, "vocabulary": "zz"}, sort_keys=False))
    assert cli_main(["vocabulary", "--data", str(tiny_data), "--into", str(ckpt)]) == 0
    vocab = yaml.safe_load(cfg_path.read_text())["vocabulary"].split()
    assert "liver" in vocab and "hepar" not in vocab  # "the hepar" is a held-out wording
    assert "zz" in vocab  # words already recorded are kept
    forms = yaml.safe_load(cfg_path.read_text())["requests"]  # and the prompts' request forms
    assert "" in forms["leads"] and "" in forms["tails"] and vlseg.load(ckpt).requests == forms
    assert vlseg.load(ckpt).segment(_ct(), "the hepar").unfamiliar == ["hepar"]
    args = ["vocabulary", "--data", str(tiny_data), "--into", str(ckpt), "--replace"]
    assert cli_main(args) == 0
    assert "zz" not in yaml.safe_load(cfg_path.read_text())["vocabulary"].split()
    assert cli_main(["vocabulary", "--data", str(tiny_data), "--into", str(tmp_path)]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err


def test_shipped_default_records_its_training_vocabulary():
    seg = vlseg.load()
    assert {"liver", "spleen", "hyperdense", "melanoma"} <= seg.vocabulary
    assert not {"hepar", "lien"} & seg.vocabulary  # the held-out split's reserved words
    # and the request forms of its training prompts, which reach it as typed
    assert {"segment", "show me", ""} <= set(seg.requests["leads"])
    assert "i need a mask of" not in seg.requests["leads"]


def test_a_prompt_with_no_known_content_word_is_unsure_not_present():
    from vlseg.serving import ServingConfig
    from vlseg.vocabulary import ungrounded

    known = parse("liver kidney left right lesion")
    assert ungrounded("segment the hepar", known)
    assert ungrounded("where is the main artery?", known)
    assert not ungrounded("the right-sided kidney", known)  # "kidney" is known
    assert not ungrounded("please segment", known)  # names nothing
    assert not ungrounded("segment the hepar", None)  # no vocabulary recorded
    serving = ServingConfig()
    assert serving.verdict(0.9, True, unfamiliar=True) == "unsure"
    assert serving.verdict(0.9, True) == "present"
    assert serving.verdict(0.1, False, unfamiliar=True) == "absent"
    off = ServingConfig(unfamiliar_unsure=False)
    assert off.verdict(0.9, True, unfamiliar=True) == "present"
