"""Per-prompt latency: CLIPSeg (transformers) vs vlseg's cached-image-feature path.

All contestants run in one process, on the same device and input size, under
``torch.inference_mode()``. CLIPSeg and vlseg ViT-B/16 use random weights (latency does not
depend on weight values). CLIPSeg gets pre-tokenized ids (open_clip's CLIP BPE, the same vocab
as CLIPSeg's CLIPTokenizer), so its tokenization is excluded; our raw-model rows exclude it too,
while the ``Segmenter`` rows (the user-facing API) include tokenization and post-processing.
Each of our rows is timed call by call in alternation with the CLIPSeg it is compared with (the
machine's speed drifts by several percent within minutes); ``Segmenter`` rows come in two
layouts: channels-last (its default) and ``*_nchw`` (``channels_last=False``, the baseline).

    python bench/segment_latency.py --repeats 30 --warmup 5 --threads 1 --json OUT.json
"""

from __future__ import annotations

import argparse
import copy
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

from vlseg.atomic import write_json  # noqa: E402
from vlseg.checkpoint import resolve  # noqa: E402
from vlseg.predictor import Segmenter  # noqa: E402
from vlseg.registry import build_model, model_config  # noqa: E402

PROMPT = "the hepatic lesion"
PHANTOM_IMAGE = 256  # phantom-tiny is timed at its own input size on a 256x256 image


def timed_interleaved(fns: dict, warmup: int, repeats: int, device: torch.device) -> dict:
    """Wall times in ms of each ``fn()`` (a list per name), the functions called in turn each
    round, so that a slow phase of this shared machine hits every contestant alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


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


def clipseg_forward(patch16: bool, size: int, ids: torch.Tensor, a):
    """A no-argument function running CLIPSeg's full forward on one image and prompt."""
    model = CLIPSegForImageSegmentation(clipseg_config(patch16)).to(a.device).eval()
    pixels = torch.randn(1, 3, size, size, device=a.device)
    ids = ids.to(a.device)
    mask = torch.ones_like(ids)
    # interpolate_pos_encoding=True (the default) resizes position embeddings for size != 224
    return lambda: model(
        input_ids=ids, attention_mask=mask, pixel_values=pixels, interpolate_pos_encoding=True
    )


def bench_ours(size: int, a, reference: dict) -> dict[str, list[float]]:
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
    out = timed_interleaved({**reference, **rows}, a.warmup, a.repeats, a.device)
    image = np.zeros((size, size, 3), np.uint8)
    return merge(out, segmenter_rows("ours_seg", model, cfg, size, image, a, reference))


def merge(a: dict[str, list[float]], b: dict[str, list[float]]) -> dict[str, list[float]]:
    """Pool the samples of rows timed in several groups (the reference contestant)."""
    out = {k: list(v) for k, v in a.items()}
    for k, v in b.items():
        out.setdefault(k, []).extend(v)
    return out


def segmenter_rows(
    prefix: str, model, cfg, image_size: int, image: np.ndarray, a, reference: dict
) -> dict[str, list[float]]:
    """First prompt (set_image + segment) and a follow-up prompt on the cached image, for a
    ``Segmenter`` in the default (NCHW, rows ``*_nchw``) and in the channels-last layout (its
    default), each group timed in alternation with the ``reference`` contestants."""
    segs = {
        suffix: Segmenter(
            copy.deepcopy(model),
            image_size=image_size,
            device=a.device,
            name=cfg.name,
            channels_last=cl,
            text_dtype=a.text_dtype,
        )
        for suffix, cl in (("_nchw", False), ("", True))
    }

    def first(seg):  # a new image and a new prompt: both towers run
        seg.text_cache.clear()
        seg.set_image(image)
        seg.segment(text=PROMPT)

    def new_prompt(seg):  # a prompt not asked before (the cache is emptied first)
        seg.text_cache.clear()
        seg.segment(text=PROMPT)

    fns = {f"{prefix}_first{sfx}": (lambda s=seg: first(s)) for sfx, seg in segs.items()}
    out = timed_interleaved({**reference, **fns}, a.warmup, a.repeats, a.device)
    calls = {}
    for sfx, seg in segs.items():
        seg.set_image(image)
        calls[sfx] = seg.encoder_calls
    fns = {f"{prefix}_followup{sfx}": (lambda s=seg: new_prompt(s)) for sfx, seg in segs.items()}
    # the same prompt again (any image, any user): its text features come from the cache
    fns.update(
        {
            f"{prefix}_repeated{sfx}": (lambda s=seg: s.segment(text=PROMPT))
            for sfx, seg in segs.items()
        }
    )
    out = merge(out, timed_interleaved({**reference, **fns}, a.warmup, a.repeats, a.device))
    for sfx, seg in segs.items():
        assert seg.encoder_calls == calls[sfx], "follow-ups must not re-run the image encoder"
    return out


def bench_phantom(a, reference: dict) -> tuple[dict[str, list[float]], dict]:
    model, cfg, meta = resolve("phantom-tiny")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (PHANTOM_IMAGE, PHANTOM_IMAGE), dtype=np.uint8)
    out = segmenter_rows("phantom_seg", model, cfg, cfg.image_size, image, a, reference)
    info = {"phantom_random_init": bool(meta.get("random_init", False))}
    return out, {**info, "phantom_image_size": cfg.image_size}


def cpu_info() -> dict:
    """The CPU model, its vector-instruction flags and what torch dispatches to, so that
    results from different machines are never compared as if they were one."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpu_flags": [f for f in wanted if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20, help="timed runs per row (median taken)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument("--size", type=int, default=224, help="input side for CLIPSeg and ViT-B/16")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="torch device (cpu or cuda)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write results here")
    p.add_argument(
        "--text-dtype",
        default=None,
        help="our Segmenters' text tower weights: bfloat16 (Segmenter(text_dtype=...)) or float32",
    )
    a = p.parse_args(argv)
    a.device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    ids = tokenizer([PROMPT])
    n_real = int((ids[0] == tokenizer.eot_token_id).nonzero()[0]) + 1
    ids = ids[:, :n_real]  # what CLIPSeg's processor gives with padding=True: <sot> ... <eot>

    # Each of our rows is timed in alternation with the CLIPSeg it is compared with; the
    # CLIPSeg medians pool its samples from every group it ran in.
    with torch.inference_mode():
        b16 = {"clipseg_b16_full": clipseg_forward(True, a.size, ids, a)}
        samples = bench_ours(a.size, a, b16)
        default = {"clipseg_default_full": clipseg_forward(False, a.size, ids, a)}
        phantom, info = bench_phantom(a, default)
        samples = merge(samples, phantom)
    order = ["clipseg_default_full", "clipseg_b16_full"]
    order += [k for k in samples if k not in order]
    ms = {k: statistics.median(samples[k]) for k in order}

    ratios = {
        "clipseg_b16_full / ours_followup (raw)": ms["clipseg_b16_full"] / ms["ours_followup"],
        "clipseg_b16_full / ours_seg_followup": ms["clipseg_b16_full"] / ms["ours_seg_followup"],
        "clipseg_default_full / phantom_seg_first": ms["clipseg_default_full"]
        / ms["phantom_seg_first"],
        "clipseg_default_full / phantom_seg_followup": ms["clipseg_default_full"]
        / ms["phantom_seg_followup"],
        "clipseg_default_full / phantom_seg_repeated": ms["clipseg_default_full"]
        / ms["phantom_seg_repeated"],
        "clipseg_b16_full / ours_seg_repeated": ms["clipseg_b16_full"] / ms["ours_seg_repeated"],
        "ours_first / ours_followup (raw)": ms["ours_first"] / ms["ours_followup"],
        "ours_seg_first / ours_seg_followup": ms["ours_seg_first"] / ms["ours_seg_followup"],
        # speed-up of the channels-last layout (Segmenter's default) over the default layout
        "phantom first: nchw / channels-last": ms["phantom_seg_first_nchw"]
        / ms["phantom_seg_first"],
        "phantom follow-up: nchw / channels-last": ms["phantom_seg_followup_nchw"]
        / ms["phantom_seg_followup"],
        "ViT-B/16 first: nchw / channels-last": ms["ours_seg_first_nchw"] / ms["ours_seg_first"],
        "ViT-B/16 follow-up: nchw / channels-last": ms["ours_seg_followup_nchw"]
        / ms["ours_seg_followup"],
    }
    machine = {
        "device": str(a.device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        **cpu_info(),
    }
    settings = {
        "text_dtype": a.text_dtype,
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
        print(f"{k:<46}{v:>7.2f}x  {target}")

    result = {"machine": machine, "settings": settings, "median_ms": ms, "ratios": ratios}
    if a.json:
        write_json(a.json, result)
    return result


if __name__ == "__main__":
    main()
