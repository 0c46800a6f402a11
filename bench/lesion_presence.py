"""Lesion present/absent on CT phantoms from the presence head (not CLIP zero-shot).

    python bench/lesion_presence.py [--data data/phantoms] [--split test] [--text "..."]

Scores every CT image of the split with ``segment(image, text).score`` and reports the AUROC
against the image label ("hepatic lesion" vs "normal liver").
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import vlseg  # noqa: E402
from vlseg.metrics import binary_auroc  # noqa: E402
from vlseg.zeroshot import image_labels  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data", default="data/phantoms")
    p.add_argument("--split", default="test")
    p.add_argument("--text", default="the hepatic lesion")
    args = p.parse_args()
    seg = vlseg.load(args.model)
    images, labels = image_labels(args.data, args.split, "ct")
    scores = np.array([seg.segment(path, args.text).score for path in images])
    y = np.array([lab == "hepatic lesion" for lab in labels])
    print(
        f"n={len(y)} (lesion {int(y.sum())}), presence AUROC for {args.text!r}: "
        f"{binary_auroc(scores, y):.4f}"
    )


if __name__ == "__main__":
    main()
