"""Per-prompt latency: CLIPSeg (transformers) vs vlseg's cached-image-feature path.

All contestants run in one process, on the same device and input size, under
``torch.inference_mode()``. CLIPSeg and vlseg ViT-B/16 use random weights (latency does not
depend on weight values). CLIPSeg gets pre-tokenized ids (open_clip's CLIP BPE, the same vocab
as CLIPSeg's CLIPTokenizer), so its tokenization is excluded; our raw-model rows exclude it too,
while the ``Segmenter`` rows (the user-facing API) include tokenization and post-processing.

    python bench/segment_latency.py --repeats 20 --warmup 3 --json runs/bench/latency.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegTextConfig,
    CLIPSegVisionConfig,
)

from vlseg.checkpoint import resolve  # noqa: E402
from vlseg.data.io import write_json  # noqa: E402
from vlseg.predictor import Segmenter  # noqa: E402
from vlseg.registry import build_model, model_config  # noqa: E402

PROMPT = "the hepatic lesion"
PHANTOM_IMAGE = 256  # phantom-tiny is timed at its own input size on a 256x256 image


def timed(fn, warmup: int, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` in ms after ``warmup`` untimed calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def clipseg_config(patch16: bool) -> CLIPSegConfig:
    """Default ``CLIPSegConfig()`` (vision patch 32), or the same with a ViT-B/16 vision tower."""
    if not patch16:
        return CLIPSegConfig()
    vision = CLIPSegVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        patch_size=16,
        image_size=224,
    )
    text = CLIPSegTextConfig(
        hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8
    )
    return CLIPSegConfig(text_config=text.to_dict(), vision_config=vision.to_dict())


def bench_clipseg(patch16: bool, size: int, ids: torch.Tensor, a) -> float:
    model = CLIPSegForImageSegmentation(clipseg_config(patch16)).to(a.device).eval()
    pixels = torch.randn(1, 3, size, size, device=a.device)
    ids = ids.to(a.device)
    mask = torch.ones_like(ids)
    # interpolate_pos_encoding=True (the default) resizes position embeddings for size != 224
    return timed(
        lambda: model(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, interpolate_pos_encoding=True
        ),
        a.warmup,
        a.repeats,
        a.device,
    )


def bench_ours(size: int, a) -> dict[str, float]:
    cfg = model_config("openai-clip-vit-b-16")
    cfg.image_size = size
    model = build_model(cfg).to(a.device).eval()
    x = torch.randn(1, 3, size, size, device=a.device)
    tok = model.text.tokenize([PROMPT])
    ids, mask = tok["ids"].to(a.device), tok["mask"].to(a.device)
    feats = model.encode_image(x)
    rows = {
        "ours_tokenize": lambda: model.text.tokenize([PROMPT]),
        "ours_first": lambda: model.decode(model.encode_image(x), model.encode_text(ids, mask)),
        "ours_followup": lambda: model.decode(feats, model.encode_text(ids, mask)),
    }
    out = {k: timed(fn, a.warmup, a.repeats, a.device) for k, fn in rows.items()}
    seg = Segmenter(model, image_size=size, device=a.device, name=cfg.name)
    out.update(segmenter_rows("ours_seg", seg, np.zeros((size, size, 3), np.uint8), a))
    return out


def segmenter_rows(prefix: str, seg: Segmenter, image: np.ndarray, a) -> dict[str, float]:
    """First prompt (set_image + segment) and a follow-up prompt on the cached image."""

    def first():
        seg.set_image(image)
        seg.segment(text=PROMPT)

    first_ms = timed(first, a.warmup, a.repeats, a.device)
    seg.set_image(image)
    calls = seg.encoder_calls
    follow_ms = timed(lambda: seg.segment(text=PROMPT), a.warmup, a.repeats, a.device)
    assert seg.encoder_calls == calls, "follow-up prompts must not re-run the image encoder"
    return {f"{prefix}_first": first_ms, f"{prefix}_followup": follow_ms}


def bench_phantom(a) -> dict[str, float]:
    model, cfg, meta = resolve("phantom-tiny")
    seg = Segmenter(model, image_size=cfg.image_size, device=a.device, name=cfg.name)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (PHANTOM_IMAGE, PHANTOM_IMAGE), dtype=np.uint8)
    out = segmenter_rows("phantom_seg", seg, image, a)
    out["phantom_random_init"] = bool(meta.get("random_init", False))
    out["phantom_image_size"] = cfg.image_size
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20, help="timed runs per row (median taken)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument("--size", type=int, default=224, help="input side for CLIPSeg and ViT-B/16")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="torch device (cpu or cuda)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write results here")
    a = p.parse_args(argv)
    a.device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    ids = tokenizer([PROMPT])
    n_real = int((ids[0] == tokenizer.eot_token_id).nonzero()[0]) + 1
    ids = ids[:, :n_real]  # what CLIPSeg's processor gives with padding=True: <sot> ... <eot>

    with torch.inference_mode():
        ms: dict = {
            "clipseg_default_full": bench_clipseg(False, a.size, ids, a),
            "clipseg_b16_full": bench_clipseg(True, a.size, ids, a),
        }
        ms.update(bench_ours(a.size, a))
        ms.update(bench_phantom(a))
    info = {k: ms.pop(k) for k in ("phantom_random_init", "phantom_image_size")}

    ratios = {
        "clipseg_b16_full / ours_followup (raw)": ms["clipseg_b16_full"] / ms["ours_followup"],
        "clipseg_b16_full / ours_seg_followup": ms["clipseg_b16_full"] / ms["ours_seg_followup"],
        "clipseg_default_full / phantom_seg_first": ms["clipseg_default_full"]
        / ms["phantom_seg_first"],
        "clipseg_default_full / phantom_seg_followup": ms["clipseg_default_full"]
        / ms["phantom_seg_followup"],
        "ours_first / ours_followup (raw)": ms["ours_first"] / ms["ours_followup"],
        "ours_seg_first / ours_seg_followup": ms["ours_seg_first"] / ms["ours_seg_followup"],
    }
    machine = {
        "device": str(a.device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    settings = {
        "size": a.size,
        "repeats": a.repeats,
        "warmup": a.warmup,
        "prompt": PROMPT,
        "clipseg_text_tokens": n_real,
        "phantom_image": PHANTOM_IMAGE,
        **info,
    }

    print(f"machine: {machine}")
    print(f"settings: {settings}")
    print(
        "CLIPSeg and ours ViT-B/16 are random-init (speed does not depend on weights); "
        "phantom-tiny is random-init: " + str(info["phantom_random_init"])
    )
    print(f"\n{'row':<28}{'median ms':>12}")
    for k, v in ms.items():
        print(f"{k:<28}{v:>12.2f}")
    print(f"\n{'ratio':<46}{'value':>8}  target")
    for k, v in ratios.items():
        target = ">= 10x" if k.startswith("clipseg") else ""
        print(f"{k:<46}{v:>7.1f}x  {target}")

    result = {"machine": machine, "settings": settings, "median_ms": ms, "ratios": ratios}
    if a.json:
        write_json(a.json, result)
    return result


if __name__ == "__main__":
    main()
