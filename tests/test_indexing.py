"""vlseg index build / search / eval-retrieval on a tiny model and dataset."""

import json

import pytest
import torch

import vlseg
from vlseg.checkpoint import load_checkpoint, save_checkpoint
from vlseg.cli import _index_model
from vlseg.cli import main as cli_main
from vlseg.indexing import check_index_model, load_index
from vlseg.registry import build_model, model_config


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    cfg = model_config("tiny-test")
    return save_checkpoint(build_model(cfg), cfg, tmp_path_factory.mktemp("m") / "ckpt")


def _eval_retrieval(index, out, model=None) -> dict:
    """``vlseg eval-retrieval`` (with ``--model`` when given) -> its metrics JSON."""
    args = ["eval-retrieval", "--index", str(index), "--out", str(out)]
    assert cli_main(args + (["--model", str(model)] if model else [])) == 0
    return json.loads(out.read_text())


def test_index_build_search_and_recall(tiny_ckpt, tiny_data, tmp_path, capsys):
    out = tmp_path / "idx"
    assert (
        cli_main(
            [
                "index",
                "build",
                "--model",
                str(tiny_ckpt),
                "--data",
                str(tiny_data),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    images, texts = load_index(out)
    assert images.ntotal == 14  # 12 regular + 2 held-out phantoms, one row per image
    assert 0 < texts.ntotal <= images.ntotal
    assert sum(len(texts.metadata(i)["images"]) for i in range(texts.ntotal)) == images.ntotal
    capsys.readouterr()
    assert (
        cli_main(
            [
                "search",
                "--model",
                str(tiny_ckpt),
                "--index",
                str(out),
                "--text",
                "dermoscopy image of a melanoma",
                "-k",
                "3",
                "--sheet",
                str(tmp_path / "hits.png"),
            ]
        )
        == 0
    )
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip()[:2].strip(".").isdigit()]
    assert len(lines) == 3
    assert (tmp_path / "hits.png").stat().st_size > 0
    res = _eval_retrieval(out, tmp_path / "r.json", tiny_ckpt)
    assert set(res["text_to_image"]) == {"R@1", "R@5", "R@10"}
    # Random weights: only the definition is checked here (recall is monotone in k).
    t2i = res["text_to_image"]
    assert t2i["R@1"] <= t2i["R@5"] <= t2i["R@10"] <= 1


def test_search_needs_exactly_one_query(tiny_ckpt, tmp_path):
    assert cli_main(["search", "--model", str(tiny_ckpt), "--index", str(tmp_path)]) == 2


def test_index_records_its_model_and_refuses_another(tiny_ckpt, tiny_data, tmp_path, capsys):
    out = tmp_path / "idx"
    cli_main(
        ["index", "build", "--model", str(tiny_ckpt), "--data", str(tiny_data), "--out", str(out)]
    )
    rec = json.loads((out / "model.json").read_text())
    assert rec["model"] == str(tiny_ckpt) and rec["adapter"] is None and len(rec["sha256"]) == 64
    # without --model the index's own model answers (same recall as naming it)
    capsys.readouterr()
    assert _eval_retrieval(out, tmp_path / "a.json") == _eval_retrieval(
        out, tmp_path / "b.json", tiny_ckpt
    )
    # another model's embeddings are refused, naming both models and the fixes
    torch.manual_seed(1)
    cfg = model_config("tiny-test")
    other = save_checkpoint(build_model(cfg), cfg, tmp_path / "other")
    capsys.readouterr()
    assert (
        cli_main(["search", "--model", str(other), "--index", str(out), "--text", "a nevus"]) != 0
    )
    err = capsys.readouterr().err
    assert "not comparable" in err and "leave --model out" in err and "vlseg index build" in err
    with pytest.raises(ValueError, match="not comparable"):
        check_index_model(vlseg.load(str(other)), out / "images")  # the chat app's path form


def test_index_of_a_model_built_in_code_asks_for_the_model(tiny_ckpt, tiny_data, tmp_path):
    from vlseg.indexing import build_index, read_model_record
    from vlseg.predictor import Segmenter

    model, _, _ = load_checkpoint(tiny_ckpt)
    build_index(Segmenter(model, image_size=64), tiny_data, tmp_path / "idx", progress=False)
    assert read_model_record(tmp_path / "idx")["known"] is False
    with pytest.raises(ValueError, match="built by a model made in code.*pass --model"):
        _index_model(None, str(tmp_path / "idx"))
    # naming a checkpoint with the same weights works
    assert _index_model(str(tiny_ckpt), str(tmp_path / "idx")).name == "tiny-test"


def test_captioned_images_gives_one_record_per_image(tiny_data):
    from vlseg.data.manifest import captioned_images, read_manifest

    pairs = captioned_images(tiny_data, "train")
    images = [r.image for r in pairs]
    assert len(images) == len(set(images)) and all(r.caption for r in pairs)
    assert set(images) == {r.image for r in read_manifest(tiny_data, "train") if r.caption}
