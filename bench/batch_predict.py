"""Batch prediction throughput: ``vlseg predict --data`` (batched encoders, one decoder call per
batch) vs a one-image-at-a-time ``segment()`` loop over the same records, same process.

    python bench/batch_predict.py --data data/phantoms --split test --limit 60 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import vlseg  # noqa: E402
from vlseg.atomic import atomic_write, write_json  # noqa: E402
from vlseg.batch import predict_manifest  # noqa: E402
from vlseg.data.io import save_mask_png  # noqa: E402
from vlseg.data.manifest import read_manifest, write_manifest  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data", default="data/phantoms")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=60, help="images")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    seg = vlseg.load(a.model)
    records = read_manifest(a.data, a.split)
    images = sorted({r.image for r in records})[: a.limit]
    keep = set(images)
    records = [r for r in records if r.image in keep]
    with tempfile.TemporaryDirectory() as tmp:
        sub = write_manifest(records, f"{tmp}/manifest.jsonl")
        by_image = {}
        for r in records:
            by_image.setdefault(r.image, []).append(r.prompts[0])
        seg.segment(str(images[0]), by_image[images[0]])  # warm-up
        t0 = time.perf_counter()
        for i, image in enumerate(images):  # a user's loop: one image, its prompts, its masks
            for j, res in enumerate(seg.segment(str(image), by_image[image])):
                with atomic_write(f"{tmp}/loop/{i}_{j}.png") as dst:
                    save_mask_png(res.mask, dst)
        loop_s = time.perf_counter() - t0
        seg.text_cache.clear()
        t0 = time.perf_counter()
        predict_manifest(seg, sub, f"{tmp}/out", batch_size=a.batch_size, progress=False)
        batch_s = time.perf_counter() - t0
    res = {
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "images": len(images),
        "records": len(records),
        "loop_images_per_s": len(images) / loop_s,
        "batch_images_per_s": len(images) / batch_s,
        "speedup": loop_s / batch_s,
    }
    print(
        f"{len(images)} images, {len(records)} prompts: segment() loop "
        f"{res['loop_images_per_s']:.1f} img/s, batch {res['batch_images_per_s']:.1f} img/s "
        f"= {res['speedup']:.2f}x (both write every mask)"
    )
    if a.json:
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
