"""Training engine and CLI on the tiny variant: train, resume, evaluate, predict, DDP."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from vlseg.cli import main as cli_main
from vlseg.config import TrainConfig
from vlseg.engine import train


def _cfg(data, out, **kw):
    base = dict(
        model="tiny-test",
        data=str(data),
        out=str(out),
        epochs=1,
        batch_size=4,
        num_workers=0,
        warmup_steps=2,
        val_limit=8,
        log_every=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_checkpoints_metrics_and_curves_then_resumes(tiny_data, tmp_path):
    out = train(_cfg(tiny_data, tmp_path / "run", max_steps=3))
    for name in [
        "last/model.safetensors",
        "best/config.yaml",
        "metrics.jsonl",
        "curves.png",
        "train_config.yaml",
        "last/optimizer.safetensors",
    ]:
        assert (out / name).is_file(), name
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in train_rows)
    val = [r for r in rows if r["kind"] == "val"][-1]
    assert 0 <= val["dice"] <= 1 and "presence_auroc" in val
    # A second call with more epochs resumes from last/ instead of starting over.
    train(_cfg(tiny_data, tmp_path / "run", epochs=2, max_steps=5))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5]


def test_cli_train_eval_predict(tiny_data, tmp_path, capsys):
    rc = cli_main(
        [
            "train",
            f"data={tiny_data}",
            f"out={tmp_path / 'r'}",
            "model=tiny-test",
            "epochs=1",
            "max_steps=2",
            "batch_size=4",
            "num_workers=0",
            "val_limit=4",
        ]
    )
    assert rc == 0
    ckpt = tmp_path / "r" / "best"
    rc = cli_main(
        [
            "eval",
            "--model",
            str(ckpt),
            "--data",
            str(tiny_data),
            "--split",
            "test",
            "test_heldout",
            "--out",
            str(tmp_path / "m.json"),
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "m.json").read_text())["results"]
    assert set(res) == {"test", "test_heldout"}
    assert 0 <= res["test_heldout"]["mIoU"] <= 1
    # held-out prompts are worded with reserved phrases; test prompts with training ones (a
    # few of which this 12-image training split happens not to use)
    assert (
        res["test"]["unfamiliar_fraction"] < 0.2 < 0.5 < res["test_heldout"]["unfamiliar_fraction"]
    )
    img = next((tiny_data / "images").glob("ct_*.png"))
    rc = cli_main(
        [
            "predict",
            "--model",
            str(ckpt),
            "--image",
            str(img),
            "--text",
            "the liver",
            "--out",
            str(tmp_path / "mask.png"),
        ]
    )
    assert rc == 0
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == np.asarray(Image.open(img)).shape[:2]
    assert set(np.unique(mask)) <= {0, 255}
    assert "mask written" in capsys.readouterr().out
    # the checkpoint records the words of its training prompts; predict names others
    vocab = yaml.safe_load((ckpt / "config.yaml").read_text())["vocabulary"].split()
    assert {"liver", "kidney"} <= set(vocab) and "the" not in vocab
    args = ["predict", "--model", str(ckpt), "--image", str(img), "--out", str(tmp_path / "m2.png")]
    assert cli_main([*args, "--text", "the hepar"]) == 0
    assert "not trained on 'hepar'" in capsys.readouterr().err
    assert cli_main([*args, "--text", "the liver"]) == 0
    assert "not trained on" not in capsys.readouterr().err
    # fine-tuning a checkpoint that records no vocabulary: what it knows is unknown, so none
    # is recorded (rather than only the fine-tuning data's words)
    meta = yaml.safe_load((ckpt / "config.yaml").read_text())
    del meta["vocabulary"]
    (ckpt / "config.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    out = train(_cfg(tiny_data, tmp_path / "ft", init=str(ckpt), max_steps=1))
    assert "vocabulary" not in yaml.safe_load((out / "last" / "config.yaml").read_text())


def test_unknown_train_override_is_rejected(capsys):
    assert cli_main(["train", "epoch=3"]) == 2
    assert "unknown override key 'epoch'; valid keys: model" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "vlseg.cli",
        "train",
        f"data={tiny_data}",
        f"out={tmp_path / 'ddp'}",
        "model=tiny-test",
        "epochs=1",
        "max_steps=2",
        "batch_size=2",
        "num_workers=0",
        "val_limit=4",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "last" / "model.safetensors").is_file()


def test_numeric_overrides_in_exponent_form_are_floats():
    from vlseg.config import _field_names, apply_overrides

    out = apply_overrides({}, ["lr=5e-4", "epochs=2", "data=x"], valid=_field_names(TrainConfig))
    assert out == {"lr": 5e-4, "epochs": 2, "data": "x"}
