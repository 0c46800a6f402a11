"""`vlseg align`: contrastive training of the image-embedding head on frozen features."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlseg.align import AlignConfig, align, recall_at_k
from vlseg.checkpoint import load_checkpoint, save_checkpoint
from vlseg.cli import main as cli_main
from vlseg.predictor import ovr_log_odds
from vlseg.registry import build_model, model_config


def test_align_swaps_the_head_and_keeps_every_other_weight(tiny_data, tmp_path, timm_model_yaml):
    torch.manual_seed(0)
    old_yaml = timm_model_yaml("avg", "linear", "avg.yaml")
    init = save_checkpoint(
        build_model(model_config(old_yaml)),
        model_config(old_yaml),
        tmp_path / "init",
        extra={"vocabulary": "kidney liver"},
    )
    new_yaml = timm_model_yaml("rot_attn", "none", "attn.yaml")
    cfg = AlignConfig(
        data=str(tiny_data),
        out=str(tmp_path / "run"),
        model=str(new_yaml),
        init=str(init),
        split="train",
        val_split="train",
        steps=12,
        batch_size=8,
        eval_every=6,
        encode_batch=4,
    )
    out = align(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [6, 12]
    assert all(0 <= r["t2i_R@10"] <= 1 and np.isfinite(r["loss"]) for r in rows)
    before, after = (
        load_file(str(init / "model.safetensors")),
        load_file(str(out / "best" / "model.safetensors")),
    )
    head = "vision.visual.head."
    assert any(k.startswith(head + "pool.") for k in after)
    assert not any(k.startswith(head) for k in set(before) & set(after))
    for k in before:
        if not k.startswith(head) and k != "logit_scale":
            assert torch.equal(before[k], after[k]), k
    model, mcfg, meta = load_checkpoint(out / "best")  # loads strictly with the new head
    assert mcfg.clip["config"]["vision_cfg"]["timm_pool"] == "rot_attn"
    assert meta["align"]["step"] in (6, 12)
    assert meta["vocabulary"] == "kidney liver"  # segmentation weights unchanged: same words


def test_align_rejects_towers_without_a_head_module(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="separate pooling/projection head"):
        align(
            AlignConfig(
                data=str(tiny_data),
                out=str(tmp_path / "r"),
                model="tiny-test",
                split="train",
                val_split="train",
                steps=1,
            )
        )


def test_align_cli_rejects_unknown_keys(capsys):
    assert cli_main(["align", "data=x", "stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown override key 'stepz'" in err and "steps" in err


def test_recall_counts_any_image_with_the_caption():
    img = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 0.3]])
    txt = torch.eye(3)[[0, 1]]  # two captions; images 0 and 2 share caption 0
    cap = torch.tensor([0, 1, 0])
    r = recall_at_k(img, txt, cap, 1)
    assert r["t2i_R@1"] == 1.0  # caption 0 finds image 0, caption 1 finds image 1
    assert r["i2t_R@1"] == pytest.approx(2 / 3)  # image 2 looks like caption 1


def test_ovr_log_odds_ranks_saturated_probabilities():
    logits = np.array([[100.0, 40.0], [100.0, 60.0], [10.0, 20.0]])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    assert probs[0, 0] == probs[1, 0] == 1.0  # float32 ties
    lo = ovr_log_odds(logits)
    assert lo[0, 0] > lo[1, 0] > lo[2, 0]
    p = 1 / (1 + np.exp(-(logits[2, 0] - logits[2, 1])))
    assert lo[2, 0] == pytest.approx(np.log(p / (1 - p)))
