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
    assert "" in yaml.safe_load((ckpt / "config.yaml").read_text())["requests"]["leads"]
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


# ---------------------------------------------------------------------------- loop parts
def test_warmup_cosine_schedule():
    from vlseg.training import warmup_cosine

    lrs = [warmup_cosine(s, warmup=4, total=12) for s in range(14)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up to the peak
    assert lrs[4] == 1.0 and lrs[8] == pytest.approx(0.5) and lrs[12] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(lrs[4:12], lrs[5:13], strict=True))  # cosine decay
    assert lrs[13] == pytest.approx(0.0)  # past the end it stays at 0
    assert warmup_cosine(0, warmup=0, total=10) == 1.0  # no warm-up


def test_make_loader_is_seeded_and_rejects_too_little_data():
    from vlseg.training import make_loader

    items = [{"index": i} for i in range(10)]

    def order(seed):
        loader, _ = make_loader(items, TrainConfig(batch_size=3, num_workers=0, seed=seed))
        return [i for batch in loader for i in batch["index"]]

    assert order(0) == order(0) != order(1)
    assert len(order(0)) == 9  # the incomplete last batch is dropped
    with pytest.raises(ValueError, match="do not fill one batch of batch_size=16"):
        make_loader(items, TrainConfig(batch_size=16, num_workers=0))


def test_metrics_log_appends_rows_and_draws_curves(tmp_path):
    from vlseg.training import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    assert log.rows() == []
    log.append({"kind": "train", "step": 1, "loss": 2.0})
    log.append({"kind": "train", "step": 2, "loss": 1.5})
    log.append({"kind": "val", "step": 2, "dice": 0.3, "mIoU": 0.2, "presence_auroc": 0.6})
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == log.rows() and [r["step"] for r in rows] == [1, 2, 2]
    log.plot(tmp_path / "curves.png")
    assert Image.open(tmp_path / "curves.png").format == "PNG"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    MetricsLog(tmp_path / "metrics.jsonl").append({"kind": "train", "step": 3, "loss": 1.0})
    assert len(log.rows()) == 4  # a resumed run appends
    assert MetricsLog(tmp_path / "metrics.jsonl", fresh=True).rows() == []


def test_step_timer_skips_the_first_step_of_an_epoch_and_sums_micro_batches():
    from vlseg.training import StepTimer

    timer = StepTimer()
    assert all(np.isnan(v) for v in timer.summary().values())
    for _ in range(2):
        timer.start_epoch()
        for stepped in (False, True, False, True, False, True):  # grad_accum=2, 3 steps
            timer.start()
            timer.stop(stepped=stepped)
    assert len(timer.step_times) == len(timer.compute_times) == 4  # 2 timed steps an epoch
    assert all(c >= 0 for c in timer.compute_times)
    rates = timer.rates(2)
    assert set(rates) == {"sec_per_step", "compute_sec_per_step"} and rates["sec_per_step"] >= 0
    assert np.isfinite(list(timer.summary().values())).all()


def _tiny_step(model, opt, x):
    from vlseg.training import optimizer_step

    model(x).square().mean().backward()
    optimizer_step(opt, 1.0, clip=model.parameters())


def test_checkpointer_round_trip_and_best(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from vlseg.training import TRAINER_STATE, Checkpointer, trainable_group

    def save(path, extra):
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "w.st")
        (path / "extra.json").write_text(json.dumps(extra))

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(trainable_group(model, 0.1), weight_decay=0.01)
    x = torch.randn(8, 4)
    for _ in range(3):
        _tiny_step(model, opt, x)
    ckpt = Checkpointer(tmp_path, save=save)
    ckpt.save_last(opt, step=3, epoch=0, score=0.5)
    assert ckpt.save_best_if_better(0.5, {"step": 3}) and ckpt.best == 0.5
    assert not ckpt.save_best_if_better(0.4, {"step": 4})  # not better: best/ is kept
    assert json.loads((tmp_path / "best" / "extra.json").read_text()) == {"step": 3}
    assert json.loads((tmp_path / "last" / "extra.json").read_text()) == {"step": 3, "epoch": 0}
    assert json.loads((tmp_path / "last" / TRAINER_STATE).read_text())["best"] == 0.5

    # a fresh model and optimizer resume to the same state, and the next step matches
    model2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(trainable_group(model2, 0.1), weight_decay=0.01)

    def restore(path):
        model2.load_state_dict(load_file(str(path / "w.st")))

    assert Checkpointer(tmp_path / "none", save=save, restore=restore).resume(opt2) is None
    resumed = Checkpointer(tmp_path, save=save, restore=restore)
    state = resumed.resume(opt2)
    assert (state.step, state.epoch, state.best, resumed.best) == (3, 0, 0.5, 0.5)
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    _tiny_step(model, opt, x)
    _tiny_step(model2, opt2, x)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="pass restore"):
        Checkpointer(tmp_path, save=save).resume(opt2)


def test_resume_continues_the_schedule_at_the_right_step(tiny_data, tmp_path):
    from vlseg.training import warmup_cosine

    def run(epochs):
        cfg = _cfg(tiny_data, tmp_path / "run", epochs=epochs, max_steps=100, batch_size=16)
        train(cfg)
        return cfg

    run(1)
    state = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())
    per_epoch = state["step"]
    assert state["epoch"] == 0 and per_epoch > 1
    cfg = run(2)  # resumes at epoch 1, step per_epoch
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    want_steps = [(s, (s - 1) // per_epoch) for s in range(1, 2 * per_epoch + 1)]
    assert [(r["step"], r["epoch"]) for r in train_rows] == want_steps
    for r in train_rows:  # the resumed run continues the same schedule, not a new warm-up
        want = cfg.lr * warmup_cosine(r["step"] - 1, warmup=cfg.warmup_steps, total=100)
        assert r["lr"] == pytest.approx(want, rel=1e-12)
    assert [r["step"] for r in rows if r["kind"] == "val"] == [per_epoch, 2 * per_epoch]


def test_config_files_load_and_loop_settings_are_declared_once():
    import dataclasses
    from pathlib import Path

    from vlseg.config import LoopConfig, from_dict, load_yaml
    from vlseg.tuning import TuneConfig, load_tune_config

    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "configs" / "train").glob("*.yaml")):
        if "align" in path.name:  # a `vlseg align` config
            from vlseg.align import load_align_config

            load_align_config(str(path), [])
            continue
        from_dict(TrainConfig, load_yaml(path), where=str(path))
    for path in sorted((repo / "configs" / "tune").glob("*.yaml")):
        assert load_tune_config(path).method == path.stem
    loop = {f.name for f in dataclasses.fields(LoopConfig)}
    assert {"epochs", "lr", "batch_size", "resume", "clip_weight"} <= loop
    # train declares no loop setting again; tune only gives some of them its own defaults
    assert not set(TrainConfig.__annotations__) & loop
    tuned = {"out", "epochs", "lr", "weight_decay", "warmup_steps", "val_limit", "log_every"}
    assert set(TuneConfig.__annotations__) & loop == tuned
    assert TuneConfig().epochs == 20 and TrainConfig().epochs == 10
    with pytest.raises(ValueError, match="unknown key.*valid keys: model"):
        from_dict(TrainConfig, {"epoch": 3})
    with pytest.raises(ValueError, match="grad_accum=0"):
        TrainConfig(grad_accum=0)
