"""One lesion out of several: "the largest / smallest hepatic lesion", "the second hepatic lesion
from the top", "the hepatic lesion nearest the aorta" (and, in volumes, "the most superior
hepatic lesion"), answered by the referring resolver (``vlseg.referring``: segment "the hepatic
lesions", keep one component) against the model's direct answer to the same text
(``Segmenter.referring = False``).

    python bench/lesion_referring.py                      # 60 slices, 6 volumes of 32x256x256
    python bench/lesion_referring.py --slices 20 --volumes 2 --model runs/x/best

Phantoms with two lesions or more only: 2-D CT phantom slices (``generate_sample``) and 3-D CT
phantom volumes (``render_ct_volume``, given as arrays with their spacing). The truth comes from
the phantom objects: largest / smallest by area (voxels in 3-D), "from the top" by the centroid
row, "most superior" by the centroid slice (slice 0 is the most inferior), "nearest the aorta"
by the smallest distance in mm from the lesion to the aorta's mask. Dice is against that one
lesion; "hit" is the share of cases with Dice >= 0.5 (the right lesion, roughly outlined).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

import vlseg  # noqa: E402
from vlseg.data.phantoms import generate_sample  # noqa: E402
from vlseg.data.phantoms.volume import render_ct_volume  # noqa: E402

PROMPTS = {
    "largest": "the largest hepatic lesion",
    "smallest": "the smallest hepatic lesion",
    "second from top": "the second hepatic lesion from the top",
    "nearest the aorta": "the hepatic lesion nearest the aorta",
}
VOLUME_ONLY = {"most superior": "the most superior hepatic lesion"}
ALL = "the hepatic lesions"


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 2.0 * int((pred & truth).sum()) / total if total else 1.0


def truths(objects, spacing) -> dict[str, np.ndarray]:
    """The lesion each selector names, from the phantom objects."""
    lesions = [o.mask for o in objects if o.category == "hepatic_lesion"]
    aorta = next(o.mask for o in objects if o.name == "aorta")
    ndim = lesions[0].ndim
    sizes = [int(m.sum()) for m in lesions]
    centres = [np.argwhere(m).mean(0) for m in lesions]
    dist = ndimage.distance_transform_edt(~aorta, sampling=spacing)
    near = [float(dist[m].min()) for m in lesions]
    by_row = np.argsort([c[ndim - 2] for c in centres], kind="stable")
    out = {
        "largest": lesions[int(np.argmax(sizes))],
        "smallest": lesions[int(np.argmin(sizes))],
        "second from top": lesions[int(by_row[1])],
        "nearest the aorta": lesions[int(np.argmin(near))],
    }
    if ndim == 3:
        out["most superior"] = lesions[int(np.argmax([c[0] for c in centres]))]
    return out


def score(seg, encoded, prompts, truth, union, rows) -> None:
    texts = list(prompts.values())
    seg.referring = True
    resolved = seg.segment(encoded, [*texts, ALL])
    seg.referring = False
    direct = seg.segment(encoded, texts)
    seg.referring = True
    for key, res, dir_ in zip(prompts, resolved, direct, strict=False):
        rows.setdefault(key, {"resolver": [], "direct": [], "notes": 0})
        rows[key]["resolver"].append(dice(res.mask, truth[key]))
        rows[key]["direct"].append(dice(dir_.mask, truth[key]))
        rows[key]["notes"] += res.note is not None
    rows.setdefault("(all lesions)", {"resolver": [], "direct": [], "notes": 0})
    rows["(all lesions)"]["resolver"].append(dice(resolved[-1].mask, union))


def table(title: str, rows: dict, n: int) -> str:
    lines = [
        f"{title} (n={n})",
        f"{'selector':<20}{'resolver Dice':>14}{'direct Dice':>13}{'resolver hit':>14}"
        f"{'direct hit':>12}{'notes':>7}",
    ]
    for key, r in rows.items():
        res, dir_ = np.array(r["resolver"]), np.array(r["direct"])
        d = f"{dir_.mean():13.3f}" if dir_.size else f"{'-':>13}"
        dh = f"{(dir_ >= 0.5).mean():12.2f}" if dir_.size else f"{'-':>12}"
        lines.append(
            f"{key:<20}{res.mean():14.3f}{d}{(res >= 0.5).mean():14.2f}{dh}{r['notes']:7d}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default=None, help="registered name or checkpoint (default: embedded)"
    )
    p.add_argument("--slices", type=int, default=60, help="2-D phantom slices with >= 2 lesions")
    p.add_argument("--volumes", type=int, default=6, help="3-D phantom volumes with >= 2 lesions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="in-plane size of slices and volumes")
    p.add_argument("--n-slices", type=int, default=32, help="slices per volume")
    p.add_argument("--device", default=None)
    args = p.parse_args()
    seg = vlseg.load(args.model, device=args.device)
    t0 = time.perf_counter()

    rows2: dict = {}
    n2 = index = 0
    while n2 < args.slices:
        s = generate_sample(seed=args.seed, index=index, modality="ct", size=args.size)
        index += 1
        lesions = [o for o in s.objects if o.category == "hepatic_lesion"]
        if len(lesions) < 2:
            continue
        encoded = seg.encode(s.image)
        union = np.any([o.mask for o in lesions], axis=0)
        score(seg, encoded, PROMPTS, truths(s.objects, s.spacing), union, rows2)
        n2 += 1
    t2 = time.perf_counter() - t0

    rows3: dict = {}
    n3 = index = 0
    while n3 < args.volumes:
        v = render_ct_volume(args.seed, index, n_slices=args.n_slices, size=args.size)
        index += 1
        lesions = [o for o in v.objects if o.category == "hepatic_lesion"]
        if len(lesions) < 2:
            continue
        encoded = seg.encode(v.hu.astype(np.float32), spacing=v.spacing)
        union = np.any([o.mask for o in lesions], axis=0)
        prompts = {**PROMPTS, **VOLUME_ONLY}
        score(seg, encoded, prompts, truths(v.objects, v.spacing), union, rows3)
        n3 += 1
    t3 = time.perf_counter() - t0 - t2

    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"model {seg.name}, device {seg.device}, seed {args.seed}")
    print(table(f"2-D CT phantom slices {args.size}x{args.size}, >= 2 lesions", rows2, n2))
    print(f"  ({t2:.0f} s)")
    shape = f"{args.n_slices}x{args.size}x{args.size}"
    print(table(f"3-D CT phantom volumes {shape}, >= 2 lesions", rows3, n3))
    print(f"  ({t3:.0f} s)")
    print("(all lesions): Dice of 'the hepatic lesions' against every lesion (the base answer)")


if __name__ == "__main__":
    main()
