"""vlseg index build / search / eval-retrieval on a tiny model and dataset."""

import json

import pytest

from vlseg.checkpoint import save_checkpoint
from vlseg.cli import main as cli_main
from vlseg.indexing import load_index
from vlseg.registry import build_model, model_config


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    cfg = model_config("tiny-test")
    return save_checkpoint(build_model(cfg), cfg, tmp_path_factory.mktemp("m") / "ckpt")


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
    assert (
        cli_main(
            [
                "eval-retrieval",
                "--model",
                str(tiny_ckpt),
                "--index",
                str(out),
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res["text_to_image"]) == {"R@1", "R@5", "R@10"}
    # Random weights: only the definition is checked here (recall is monotone in k).
    t2i = res["text_to_image"]
    assert t2i["R@1"] <= t2i["R@5"] <= t2i["R@10"] <= 1


def test_search_needs_exactly_one_query(tiny_ckpt, tmp_path):
    assert cli_main(["search", "--model", str(tiny_ckpt), "--index", str(tmp_path)]) == 2
