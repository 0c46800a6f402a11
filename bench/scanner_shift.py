"""Zero-shot answers on "another scanner": the shift of ``bench/prompt_tuning.py`` (CT with a
narrower window, gamma 0.6, an inverted grey scale and heavy noise; dermoscopy with a warm cast
and blur) applied to a dataset's images, scored as ``Segmenter.segment`` answers users (serving
threshold, calibration, out-of-domain check, referring resolver), per modality, for one or more
models side by side with the unshifted images.

    python bench/scanner_shift.py --data data/cal --split test \
        --model vlseg/weights/phantom-tiny runs/ft-contrast/best --json runs/bench/shift.json

Per model and image set: Dice on positive expressions (an out-of-domain or absent verdict
predicts an empty mask, so it scores 0 there), the share of answers flagged out-of-domain, and
"present" on target-free expressions. The shifted copy is written once to ``--shifted``.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from prompt_tuning import make_shifted  # noqa: E402  (bench/ is the script's folder)
from zeroshot_wording import cpu_name  # noqa: E402

import vlseg  # noqa: E402
from vlseg.atomic import write_json  # noqa: E402
from vlseg.data.manifest import ManifestDataset  # noqa: E402
from vlseg.evaluation import evaluate_served  # noqa: E402
from vlseg.metrics import dice  # noqa: E402


def by_modality(seg, data: Path, split: str, limit: int | None) -> dict:
    vis = seg.model.vision
    ds = ManifestDataset(
        data, split, image_size=seg.image_size, mean=vis.mean, std=vis.std, prompt="all"
    )
    rows = defaultdict(lambda: {"dice": [], "ood": [], "present_neg": []})

    def collect(rec, res, target, positive) -> None:
        r = rows[rec.modality or "?"]
        r["ood"].append(res.verdict == "out-of-domain")
        if positive:
            r["dice"].append(dice(res.mask, target))
        else:
            r["present_neg"].append(res.present)

    evaluate_served(
        seg,
        ds,
        limit=limit,
        progress=True,
        on_item=collect,
        hd95=False,
        vocabulary=seg.vocabulary,
        ood=seg.ood,
    )

    def mean(v):
        return float(np.mean(v)) if v else float("nan")

    out = {
        mod: {
            "dice": mean(r["dice"]),
            "n_positive": len(r["dice"]),
            "ood_flagged": mean(r["ood"]),
            "present_on_negatives": mean(r["present_neg"]),
        }
        for mod, r in sorted(rows.items())
    }
    all_d = [d for r in rows.values() for d in r["dice"]]
    out["all"] = {
        "dice": mean(all_d),
        "n_positive": len(all_d),
        "ood_flagged": mean([x for r in rows.values() for x in r["ood"]]),
        "present_on_negatives": mean([x for r in rows.values() for x in r["present_neg"]]),
    }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["phantom-tiny"])
    p.add_argument("--data", default="data/cal", help="a manifest dataset (its images shifted)")
    p.add_argument("--shifted", default=None, help="where the shifted copy goes (DATA_shift)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="an evenly spaced subset")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    shifted = make_shifted(data, Path(args.shifted or f"{data}_shift"))
    report = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "data": str(data)}
    report["models"] = {}
    for name in args.model:
        seg = vlseg.load(name)
        res = {
            "original": by_modality(seg, data, args.split, args.limit),
            "shifted": by_modality(seg, shifted, args.split, args.limit),
        }
        report["models"][name] = res
        print(f"\n{name}")
        head = ("images", "modality", "Dice", "n", "OOD", "present|neg")
        print("  {:9s} {:11s} {:>6s} {:>5s} {:>6s} {:>11s}".format(*head))
        for which, table in res.items():
            for mod, m in table.items():
                print(
                    f"  {which:9s} {mod:11s} {m['dice']:6.3f} {m['n_positive']:5d} "
                    f"{m['ood_flagged']:6.1%} {m['present_on_negatives']:11.1%}"
                )
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
