"""Where a model fails on a split: Dice (presence-gated, positives only) per target and per
noun phrase, as ``vlseg eval`` computes it at the original resolution.

    python bench/heldout_breakdown.py --model phantom-tiny --data data/phantoms \
        --split test_heldout --json runs/bench/heldout_breakdown.json
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import vlseg  # noqa: E402
from vlseg.atomic import write_json  # noqa: E402
from vlseg.data.manifest import ManifestDataset  # noqa: E402
from vlseg.evaluation import evaluate_served  # noqa: E402
from vlseg.metrics import dice  # noqa: E402


def breakdown(seg, data: str, split: str, limit: int | None = None) -> dict:
    vis = seg.model.vision
    ds = ManifestDataset(
        data, split, image_size=seg.image_size, mean=vis.mean, std=vis.std, prompt="all"
    )
    by_target, by_text = defaultdict(list), defaultdict(list)

    def collect(rec, res, target, positive) -> None:
        if positive:
            d = dice(res.mask, target)
            by_target[rec.target or "?"].append(d)
            by_text[res.text].append(d)

    evaluate_served(
        seg,
        ds,
        limit=limit,
        progress=True,
        on_item=collect,
        hd95=False,
    )
    summary = {k: {"n": len(v), "dice": float(np.mean(v))} for k, v in sorted(by_target.items())}
    texts = {k: {"n": len(v), "dice": float(np.mean(v))} for k, v in sorted(by_text.items())}
    all_d = [d for v in by_target.values() for d in v]
    return {"dice": float(np.mean(all_d)), "n": len(all_d), "targets": summary, "texts": texts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data", default="data/phantoms")
    p.add_argument("--split", default="test_heldout")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="an evenly spaced subset")
    p.add_argument(
        "--no-refine", action="store_true", help="without the edge-aware mask refinement"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seg = vlseg.load(args.model)
    if args.no_refine:
        seg.serving.refine = None
    res = breakdown(seg, args.data, args.split, args.limit)
    print(f"{args.split}: Dice {res['dice']:.3f} over {res['n']} positive expressions")
    for k, v in res["targets"].items():
        print(f"  {k:24s} n={v['n']:4d}  Dice {v['dice']:.3f}")
    if args.json:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
