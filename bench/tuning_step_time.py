"""Step time of each prompt-tuning method against full fine-tuning, repeated and interleaved.

The domain-shift study (``bench/prompt_tuning.py``) times each method once, over one long run;
two methods that do the same work can differ there by a few percent. This script answers only
the cost question, more carefully: ``--rounds`` rounds, each running every method and full
fine-tuning for ``--steps`` optimizer steps on the same few-shot images (order rotated from
round to round, so slow drift of the machine does not favour one method), and reports per
method the median compute seconds per step (data-loader waits excluded; the first steps of a
run, which warm up the allocator and kernels, dropped) and the ratio to full fine-tuning of the
same round: median, min and max over rounds.

    python bench/tuning_step_time.py --data runs/bench/pt_vocab2/source_n400_s11_vocab \
        --rounds 3 --steps 40 --lora-towers text --json runs/bench/tuning_step_time.json

``--data`` is any manifest dataset (here the study's vocabulary-shifted one); settings come from
``configs/tune/<method>.yaml`` as in the study, full fine-tuning trains every parameter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import torch  # noqa: E402

from vlseg.atomic import write_json  # noqa: E402
from vlseg.checkpoint import WEIGHTS  # noqa: E402
from vlseg.config import TrainConfig  # noqa: E402
from vlseg.data.manifest import read_manifest, write_manifest  # noqa: E402
from vlseg.engine import train  # noqa: E402
from vlseg.registry import WEIGHTS_DIR  # noqa: E402
from vlseg.tuning import few_shot_records, load_tune_config, tune  # noqa: E402

METHODS = ["coop", "cocoop", "vpt", "maple", "lora"]
WARMUP_STEPS = 3  # dropped from each run's median


def compute_per_step(run: Path) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    times = [
        r["compute_sec_per_step"]
        for r in rows
        if r["kind"] == "train" and r.get("compute_sec_per_step") is not None
    ][WARMUP_STEPS:]
    if not times:
        raise RuntimeError(f"{run}: no timed steps; use --steps > {WARMUP_STEPS + 1}")
    return statistics.median(times)


def run_full(args, base: str, subset: Path, out: Path) -> float:
    cfg = TrainConfig(
        init=base,
        data=str(subset),
        out=str(out),
        epochs=10_000,
        max_steps=args.steps,
        batch_size=args.batch_size,
        num_workers=0,
        val_limit=4,
        eval_every=10_000,  # validate once, after the last step
        log_every=1,
        seed=args.seed,
        resume=False,
        model_overrides={"vision_trainable": "full", "text_trainable": "full"},
    )
    train(cfg)
    return compute_per_step(out)


def run_method(args, method: str, base: str, out: Path) -> float:
    extra = {"lora_towers": args.lora_towers} if method == "lora" and args.lora_towers else {}
    cfg = load_tune_config(
        Path(__file__).resolve().parent.parent / "configs" / "tune" / f"{method}.yaml",
        model=base,
        data=str(args.data),
        out=str(out),
        limit=args.shots,
        epochs=10_000,
        max_steps=args.steps,
        batch_size=args.batch_size,
        num_workers=0,
        val_limit=4,
        eval_limit=4,
        eval_every=10_000,
        log_every=1,
        seed=args.seed,
        resume=False,
        **extra,
    )
    tune(cfg)
    return compute_per_step(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="manifest dataset to tune on")
    p.add_argument("--model", default="phantom-tiny", help="base model (name or checkpoint)")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--shots", type=int, default=64, help="labelled images (as in the study)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--lora-towers", nargs="+", default=None, help="e.g. text (as the study)")
    p.add_argument("--json", default=None, metavar="OUT")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    base = Path(args.model)
    if not (base / WEIGHTS).is_file():
        base = WEIGHTS_DIR / args.model
    if not (base / WEIGHTS).is_file():
        raise SystemExit(f"--model {args.model!r}: need a checkpoint directory or a shipped model")
    base = str(base)
    work = Path(tempfile.mkdtemp(prefix="vlseg_step_time_"))
    chosen = few_shot_records(args.data, "train", args.shots, args.seed)
    rest = [r for r in read_manifest(args.data) if r.split != "train"]
    subset = write_manifest(chosen + rest, work / "fewshot.jsonl")

    names = ["full"] + list(args.methods)
    per_round: list[dict[str, float]] = []
    try:
        for k in range(args.rounds):
            order = names[k % len(names) :] + names[: k % len(names)]
            times = {}
            for name in order:
                out = work / f"r{k}_{name}"
                if name == "full":
                    times[name] = run_full(args, base, subset, out)
                else:
                    times[name] = run_method(args, name, base, out)
                shutil.rmtree(out, ignore_errors=True)
            per_round.append(times)
            print(f"round {k + 1}: " + "  ".join(f"{n} {t:.3f}s" for n, t in times.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for name in args.methods:
        ratios = [r[name] / r["full"] for r in per_round]
        summary[name] = {
            "compute_s_per_step": statistics.median(r[name] for r in per_round),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    full_s = statistics.median(r["full"] for r in per_round)
    print(f"\nfull fine-tuning: {full_s:.3f} s/step (median over {args.rounds} rounds)")
    print("| method | compute s/step | x full FT (median) | min | max |")
    print("|---|---:|---:|---:|---:|")
    for name, s in summary.items():
        print(
            f"| {name} | {s['compute_s_per_step']:.3f} | {s['ratio_median']:.3f} | "
            f"{s['ratio_min']:.3f} | {s['ratio_max']:.3f} |"
        )
    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "full_s_per_step": full_s,
        "methods": summary,
        "rounds": per_round,
    }
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
