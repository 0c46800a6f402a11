"""Seconds per volume: the first prompt (read + encode every slice + decode) against a follow-up
on the cached volume (decode only), and the process's peak memory.

    python bench/volume_latency.py                       # 100 slices of 256x256, phantom-tiny
    python bench/volume_latency.py --slices 100 --size 256 --repeats 3 --threads 2 --out r.json
    python bench/volume_latency.py --model openai-clip-vit-b-16 --untrained --slices 32

The volume is a 3-D CT phantom (``vlseg.data.phantoms.volume``) written as NIfTI, so the first
prompt includes reading the file. Ratios are taken within this process; the CPU is recorded.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_latency import cpu_info  # noqa: E402

import vlseg  # noqa: E402
from vlseg.data.phantoms.volume import render_ct_volume  # noqa: E402

FIRST = "the hepatic lesion"
FOLLOW_UPS = ["the liver", "the spleen", "the left kidney", "the aorta", "both kidneys"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="name or checkpoint dir (default phantom-tiny)")
    ap.add_argument(
        "--untrained",
        action="store_true",
        help="allow a registered variant without trained weights (random weights: speed only, "
        "e.g. --model openai-clip-vit-b-16)",
    )
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--batch-size", type=int, default=32, help="slices per encoder batch")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    vol = render_ct_volume(seed=3, index=0, n_slices=args.slices, size=args.size)
    tmp = Path(tempfile.mkdtemp(prefix="vlseg-bench-"))
    path = tmp / "volume.nii.gz"
    vol.save_nifti(path)
    seg = vlseg.load(args.model, allow_untrained=args.untrained)
    rss_loaded = peak_rss_mb()
    # warm-up: one full pass (allocators, oneDNN primitives)
    seg.segment(seg.encode_volume(path, batch_size=args.batch_size), FIRST)

    first, follow, repeat = [], [], []
    for r in range(args.repeats):
        seg.text_cache.clear()
        t = time.perf_counter()
        encoded = seg.encode_volume(path, batch_size=args.batch_size)
        res = seg.segment(encoded, FIRST)
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        seg.segment(encoded, FOLLOW_UPS[r % len(FOLLOW_UPS)])  # a new prompt
        follow.append(time.perf_counter() - t)
        t = time.perf_counter()
        seg.segment(encoded, FIRST)  # a prompt asked before on this volume
        repeat.append(time.perf_counter() - t)
    out = {
        "cpu": cpu_info(),
        "threads": torch.get_num_threads(),
        "model": seg.name,
        "volume": {"slices": args.slices, "size": args.size, "spacing_mm": list(vol.spacing)},
        "first_prompt_s": statistics.median(first),
        "follow_up_new_prompt_s": statistics.median(follow),
        "follow_up_repeated_prompt_s": statistics.median(repeat),
        "speedup_new_prompt": statistics.median(first) / statistics.median(follow),
        "speedup_repeated_prompt": statistics.median(first) / statistics.median(repeat),
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_load_mb": rss_loaded,
        "example": res.summary(),
    }
    print(json.dumps(out, indent=2))
    if args.out:
        vlseg.data.io.write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
