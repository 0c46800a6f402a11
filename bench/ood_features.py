"""Which image features should the out-of-domain detector use? Each candidate is fitted the way
``vlseg calibrate`` fits the shipped one (a shrunk-covariance Gaussian on the training images of
classic + domain-randomised phantoms, threshold at a quantile of their validation images) and
scored on the out-of-domain test images (``vlseg.data.ood_images``; seed 1 to choose, seed 2 to
report), the held-out renderer family and classic test phantoms (both should pass).

    python bench/ood_features.py --fit data/ph600 data/rand --family data/family \\
        --classic data/cal --json runs/bench/ood_features.json

Data as in docs/honesty.md (``vlseg phantoms ...``). Features come from the image encoder's four
maps (``ImageFeatures.maps``, finest first), each block L2-normalised:

- ``means``: global averages of every map (the detector before ``means+layout``);
- ``std``: per-channel standard deviations of every map (texture statistics);
- ``layout``: the coarsest map averaged on a 2 x 2 grid (where things are);
- ``layout16``: the stride-16 map on a 2 x 2 grid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import vlseg  # noqa: E402
from vlseg.atomic import write_json  # noqa: E402
from vlseg.data.ood_images import ood_images  # noqa: E402
from vlseg.ood import fit_ood  # noqa: E402

CANDIDATES = {
    "means": ["means"],
    "means+std": ["means", "std"],
    "means+layout (shipped)": ["means", "layout"],
    "means+std+layout": ["means", "std", "layout"],
    "means+layout+layout16": ["means", "layout", "layout16"],
    "means+std+layout+layout16": ["means", "std", "layout", "layout16"],
}


def images_of(root: str, split: str, limit: int | None = None) -> list[str]:
    """Distinct image paths of a manifest split, evenly thinned to ``limit``."""
    seen: dict[str, None] = {}
    for line in open(Path(root) / "manifest.jsonl", encoding="utf-8"):
        r = json.loads(line)
        if r["split"] == split:
            p = r["image"] if os.path.isabs(r["image"]) else str(Path(root) / r["image"])
            seen.setdefault(p, None)
    out = list(seen)
    if limit and len(out) > limit:
        out = [out[int(i)] for i in np.linspace(0, len(out) - 1, limit).round()]
    return out


@torch.no_grad()
def blocks_of(seg, images: list, batch_size: int = 32) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {k: [] for k in ("means", "std", "layout", "layout16")}
    for i in range(0, len(images), batch_size):
        maps = [m.float() for m in seg.encode(images[i : i + batch_size]).features.maps]
        parts["means"].append(torch.cat([m.mean((2, 3)) for m in maps], 1))
        parts["std"].append(torch.cat([m.std((2, 3)) for m in maps], 1))
        parts["layout"].append(F.adaptive_avg_pool2d(maps[-1], 2).flatten(1))
        parts["layout16"].append(F.adaptive_avg_pool2d(maps[-2], 2).flatten(1))
    return {
        k: F.normalize(torch.cat(v), dim=-1).numpy().astype(np.float64) for k, v in parts.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="name or checkpoint dir (default phantom-tiny)")
    ap.add_argument("--fit", nargs="+", required=True, help="datasets the model should accept")
    ap.add_argument("--family", required=True, help="held-out renderer family dataset")
    ap.add_argument("--classic", required=True, help="classic phantoms (test split used)")
    ap.add_argument("--fit-limit", type=int, default=1000, help="training images per dataset")
    ap.add_argument("--ood-per-kind", type=int, default=20)
    ap.add_argument("--quantiles", type=float, nargs="+", default=[0.95, 0.99])
    ap.add_argument("--shrinkage", type=float, nargs="+", default=[0.1, 0.5])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seg = vlseg.load(args.model)

    def stacked(paths_by_set):
        got = [blocks_of(seg, p) for p in paths_by_set]
        return {k: np.concatenate([g[k] for g in got]) for k in got[0]}

    fit = stacked([images_of(d, "train", args.fit_limit) for d in args.fit])
    val = stacked([images_of(d, "val") for d in args.fit])
    family = blocks_of(seg, images_of(args.family, "test"))
    classic = blocks_of(seg, images_of(args.classic, "test"))
    ood, kinds = {}, {}
    for seed in (1, 2):
        ims = ood_images(args.ood_per_kind, seed=seed, size=256)
        ood[seed] = blocks_of(seg, [im.image for im in ims])
        kinds[seed] = np.array([im.kind for im in ims])

    rows = []
    for q in args.quantiles:
        for name, parts in CANDIDATES.items():
            for s in args.shrinkage:

                def feats(b, parts=parts):
                    return np.concatenate([b[p] for p in parts], 1)

                det = fit_ood(feats(fit), shrinkage=s, features="means")  # kind: unused here
                thr = float(np.quantile(det.score(feats(val)), q))
                row = {"features": name, "shrinkage": s, "quantile": q}
                for seed in (1, 2):
                    flagged = det.score(feats(ood[seed])) > thr
                    row[f"ood_seed{seed}"] = float(flagged.mean())
                    row[f"per_kind_seed{seed}"] = {
                        k: float(flagged[kinds[seed] == k].mean()) for k in sorted(set(kinds[seed]))
                    }
                row["family"] = float(np.mean(det.score(feats(family)) > thr))
                row["classic_test"] = float(np.mean(det.score(feats(classic)) > thr))
                rows.append(row)
                weakest = min(row["per_kind_seed1"].items(), key=lambda kv: kv[1])
                print(
                    f"q={q} {name:27s} s={s}  OOD flagged seed 1 {row['ood_seed1']:.3f} "
                    f"seed 2 {row['ood_seed2']:.3f}  family {row['family']:.3f}  classic "
                    f"{row['classic_test']:.3f}  weakest (seed 1) {weakest[0]} {weakest[1]:.2f}",
                    flush=True,
                )
    if args.json:
        write_json(
            args.json,
            {
                "cpu": platform.processor() or platform.machine(),
                "fit_images": int(len(fit["means"])),
                "val_images": int(len(val["means"])),
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
