"""How honest a checkpoint's answers are: presence calibration (ECE, reliability diagram),
"present" on target-free prompts, whether "unsure" means something, and out-of-domain flags.

    python bench/honest_answers.py --model vlseg/weights/phantom-tiny --data data/phantoms \
        --split test --ood-per-kind 20 --out runs/bench/honest

Reads the checkpoint's serving settings as recorded by ``vlseg calibrate``; prints and writes
``honest.json`` and ``reliability.png`` (raw vs calibrated presence) under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import vlseg  # noqa: E402
from vlseg.atomic import write_json  # noqa: E402
from vlseg.calibration import expected_calibration_error, reliability_diagram  # noqa: E402
from vlseg.data.manifest import ManifestDataset  # noqa: E402
from vlseg.data.ood_images import ood_images  # noqa: E402
from vlseg.evaluation import evaluate_served  # noqa: E402


def presence_report(seg, ds, limit):
    """Per-expression presence: raw and calibrated probability, verdict, truth."""
    rows = []

    def keep(rec, res, target, positive):
        rows.append((res.presence_logit, res.score, res.verdict, positive))

    evaluate_served(
        seg,
        ds,
        limit=limit,
        on_item=keep,
    )
    z = np.array([r[0] for r in rows])
    p = np.array([r[1] for r in rows])
    verdict = np.array([r[2] for r in rows])
    y = np.array([r[3] for r in rows], dtype=bool)
    raw = 1 / (1 + np.exp(-z))
    confident = verdict != "unsure"
    said_present = p >= seg.threshold
    wrong = said_present != y
    return {
        "n": int(len(y)),
        "ece_raw": expected_calibration_error(raw, y),
        "ece_calibrated": expected_calibration_error(p, y),
        "present_rate_on_target_free": float(said_present[~y].mean()) if (~y).any() else None,
        "present_verdict_rate_on_target_free": float((verdict[~y] == "present").mean()),
        "unsure_fraction": float((~confident).mean()),
        "error_rate_unsure": float(wrong[~confident].mean()) if (~confident).any() else None,
        "error_rate_confident": float(wrong[confident].mean()) if confident.any() else None,
    }, (raw, p, y)


def ood_report(seg, ds, per_kind, size, seed):
    if seg.ood is None or seg.serving.ood_threshold is None:
        return {"note": "the checkpoint has no out-of-domain fit (run vlseg calibrate)"}
    thr = seg.serving.ood_threshold
    images = ood_images(per_kind, seed=seed, size=size)
    scores = np.concatenate(
        [
            seg.encode([im.image for im in images[i : i + 32]]).ood_scores
            for i in range(0, len(images), 32)
        ]
    )
    kinds = sorted({im.kind for im in images})
    per = {
        k: float(np.mean([s > thr for s, im in zip(scores, images, strict=True) if im.kind == k]))
        for k in kinds
    }
    ind = list(dict.fromkeys(str(r.image) for r in ds.records))
    ind_scores = np.concatenate(
        [seg.encode(ind[i : i + 32]).ood_scores for i in range(0, len(ind), 32)]
    )
    return {
        "threshold": thr,
        "ood_images": len(images),
        "ood_flagged": float(np.mean(scores > thr)),
        "ood_flagged_per_kind": per,
        "in_distribution_images": len(ind),
        "in_distribution_flagged": float(np.mean(ind_scores > thr)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default="data/phantoms")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--ood-per-kind", type=int, default=20)
    # seed 1 chose the detector's features (docs/honesty.md); report on unseen seeds
    ap.add_argument("--ood-seed", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seg = vlseg.load(args.model)
    vis = seg.model.vision
    ds = ManifestDataset(
        args.data, args.split, image_size=seg.image_size, mean=vis.mean, std=vis.std, prompt="all"
    )
    pres, (raw, cal, y) = presence_report(seg, ds, args.limit)
    res = {
        "model": str(args.model),
        "data": str(args.data),
        "split": args.split,
        "cpu": platform.processor() or platform.machine(),
        "serving": seg.serving.to_dict(),
        "presence": pres,
        "ood": ood_report(seg, ds, args.ood_per_kind, 256, args.ood_seed),
    }
    p = res["presence"]
    print(
        f"{args.split}: {p['n']} expressions, ECE {p['ece_raw']:.4f} raw -> "
        f"{p['ece_calibrated']:.4f} calibrated; 'present' on target-free "
        f"{p['present_rate_on_target_free']:.3f}; unsure {p['unsure_fraction']:.3f} of answers, "
        f"error rate unsure {p['error_rate_unsure']} vs confident {p['error_rate_confident']:.4f}"
    )
    o = res["ood"]
    if "threshold" in o:
        print(
            f"out-of-domain: {o['ood_flagged']:.3f} of {o['ood_images']} OOD images flagged, "
            f"{o['in_distribution_flagged']:.3f} of {o['in_distribution_images']} in-distribution"
        )
        for k, v in o["ood_flagged_per_kind"].items():
            print(f"  {k:14s} {v:.2f}")
    if args.out:
        out = Path(args.out)
        write_json(out / "honest.json", res)
        reliability_diagram({"raw": (raw, y), "calibrated": (cal, y)}, out / "reliability.png")
        print(f"wrote {out / 'honest.json'} and {out / 'reliability.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
