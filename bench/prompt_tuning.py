"""Domain-shift study: few-shot prompt tuning (CoOp, CoCoOp, VPT, MaPLe, LoRA) vs full fine-tuning.

One command runs everything (phantom generation, the shifted domain, every tuning run, the full
fine-tuning reference, evaluation, the table and the JSON)::

    python bench/prompt_tuning.py --model phantom-tiny --shots 64 \
        --work runs/bench/prompt_tuning --json runs/bench/prompt_tuning.json

``--shots 16 64 256`` adds the other few-shot sizes. A quick smoke run on the tiny test model:
``python bench/prompt_tuning.py --model tiny-test --n 24 --size 64 --shots 4 --steps 2
--batch-size 4 --eval-limit 16 --val-limit 8 --work /tmp/pt_bench``.

What it does:

1. Source domain: ``--n`` procedural phantoms (``vlseg.data.phantoms``, ``--seed``), or ``--data``.
2. Target domain ("another scanner"): the same images post-processed into a new dataset
   directory with the same manifest and masks. CT: narrower window, gamma 0.6, inverted
   greyscale and heavy Gaussian noise (sigma 0.08). Dermoscopy: a warm colour cast and a
   Gaussian blur (sigma 1.5 px). Noise is seeded per file, so the shifted set is reproducible.
3. The base model is evaluated on the source and shifted test splits (Dice, and zero-shot
   top-1 on the image labels of each modality, with the shipped label sets and templates).
4. For each method and shot count, ``vlseg.tuning.tune`` (settings from
   ``configs/tune/<method>.yaml``, budget from the flags) trains an adapter on ``shots``
   labelled shifted images (same draw for every method) for ``--steps`` optimizer steps; the
   best adapter (shifted val split) is reloaded with ``vlseg.load(base, adapter=...)`` and
   evaluated: trainable parameters, adapter bytes, seconds per step, Dice and zero-shot after.
5. Reference: full fine-tuning (``vlseg.engine.train`` from the base weights, what the model
   config lets train) on the same images and step budget.

Dice is over positive expressions of the shifted test split (``--eval-limit`` evenly spaced
items), as ``vlseg eval`` reports it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import time
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

import vlseg  # noqa: E402
from vlseg.atomic import atomic_directory, write_json  # noqa: E402
from vlseg.checkpoint import WEIGHTS, load_checkpoint, resolve, save_checkpoint  # noqa: E402
from vlseg.config import TrainConfig  # noqa: E402
from vlseg.data.manifest import ManifestDataset, read_manifest, write_manifest  # noqa: E402
from vlseg.data.phantoms import write_dataset  # noqa: E402
from vlseg.engine import evaluate, train  # noqa: E402
from vlseg.tuning import few_shot_records, load_tune_config, tune  # noqa: E402
from vlseg.zeroshot import evaluate_classification, image_labels  # noqa: E402

METHODS = ("coop", "cocoop", "vpt", "maple", "lora")
# --full-scope: model config changes for full fine-tuning (every parameter, or the config's own)
FULL_SCOPE = {"all": {"vision_trainable": "full", "text_trainable": "full"}, "config": None}
TUNE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tune"
# modality -> (label set, template set) for zero-shot accuracy
ZERO_SHOT = {"ct": ("phantom-ct", "ct"), "dermoscopy": ("phantom-dermoscopy", "dermoscopy")}


# ---------------------------------------------------------------------------- the shift
def shift_ct(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another CT scanner/protocol: narrower window, gamma, inverted greyscale, heavy noise."""
    v = gray.astype(np.float32) / 255.0
    v = np.clip((v - 0.15) / 0.7, 0.0, 1.0) ** 0.6
    v = 1.0 - v + rng.normal(0.0, 0.08, v.shape)
    return (np.clip(v, 0.0, 1.0) * 255).round().astype(np.uint8)


def shift_dermoscopy(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another dermatoscope: warm colour cast and defocus blur."""
    v = rgb.astype(np.float32) / 255.0
    v = v * np.array([1.15, 0.92, 0.72]) + np.array([0.06, 0.0, -0.02])
    v = np.stack([ndimage.gaussian_filter(v[..., c], 1.5) for c in range(3)], axis=-1)
    return (np.clip(v, 0.0, 1.0) * 255).round().astype(np.uint8)


# A new vocabulary: the German clinical terms of a German-speaking clinic, inside the same
# English instructions ("segment the Leber"). Longest phrases first; whole words, any case.
VOCAB = [
    ("hepatic parenchyma", "Leberparenchym"),
    ("splenic parenchyma", "Milzparenchym"),
    ("vertebral body", "Wirbelkörper"),
    ("lumbar vertebra", "Lendenwirbel"),
    ("abdominal aorta", "Bauchaorta"),
    ("basal cell carcinoma", "Basalzellkarzinom"),
    ("seborrheic keratosis", "seborrhoische Keratose"),
    ("malignant melanoma", "malignes Melanom"),
    ("benign mole", "gutartiges Muttermal"),
    ("fibrous skin nodule", "fibröser Hautknoten"),
    ("ink mark", "Tintenmarkierung"),
    ("pen marking", "Stiftmarkierung"),
    ("purple marking", "violette Markierung"),
    ("skin lesion", "Hautläsion"),
    ("liver lesions", "Leberläsionen"),
    ("liver lesion", "Leberläsion"),
    ("liver tumours", "Lebertumoren"),
    ("liver tumour", "Lebertumor"),
    ("hepatic lesions", "Leberherde"),
    ("hepatic lesion", "Leberherd"),
    ("hepatic masses", "Leberraumforderungen"),
    ("hepatic mass", "Leberraumforderung"),
    ("liver", "Leber"),
    ("spleen", "Milz"),
    ("kidneys", "Nieren"),
    ("kidney", "Niere"),
    ("spine", "Wirbelsäule"),
    ("vertebra", "Wirbel"),
    ("aorta", "Hauptschlagader"),
    ("cyst", "Zyste"),
    ("lesions", "Läsionen"),
    ("lesion", "Läsion"),
    ("spots", "Flecken"),
    ("spot", "Fleck"),
    ("mole", "Muttermal"),
    ("melanoma", "Melanom"),
    ("nevus", "Nävus"),
    ("naevus", "Naevus"),
    ("keratosis", "Keratose"),
    ("bcc", "BZK"),
    ("dermatofibroma", "Dermatofibrom"),
    ("lobe", "Lappen"),
]
_VOCAB_RE = re.compile(r"\b(" + "|".join(re.escape(en) for en, _ in VOCAB) + r")\b", re.IGNORECASE)
_VOCAB_MAP = {en: de for en, de in VOCAB}


def translate(text: str) -> str:
    """Replace the English clinical terms of a prompt by their German ones."""
    return _VOCAB_RE.sub(lambda m: _VOCAB_MAP[m.group(1).lower()], text)


def make_vocab_shifted(source: Path, out: Path) -> Path:
    """Copy a manifest dataset to ``out`` with every referring expression translated by
    ``VOCAB``; images (hard-linked where possible), masks and captions are unchanged."""
    if (out / "manifest.jsonl").is_file():
        return out
    records = read_manifest(source)
    with atomic_directory(out) as tmp:
        for sub in ("images", "masks"):
            shutil.copytree(source / sub, tmp / sub, copy_function=_link_or_copy)
        for r in records:
            r.prompts = [translate(t) for t in r.prompts]
            r.image = tmp / r.image.relative_to(source)
            r.mask = None if r.mask is None else tmp / r.mask.relative_to(source)
        write_manifest(records, tmp / "manifest.jsonl")
    return out


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def make_shifted(source: Path, out: Path) -> Path:
    """Copy a manifest dataset to ``out`` with every image passed through the shift of its
    modality; masks and manifest are unchanged. Skipped if ``out`` exists."""
    if (out / "manifest.jsonl").is_file():
        return out
    records = read_manifest(source)
    modality = {r.image: r.modality for r in records}
    with atomic_directory(out) as tmp:
        for name in ("manifest.jsonl", "dataset.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        shutil.copytree(source / "masks", tmp / "masks")
        for image, mod in modality.items():
            rel = image.relative_to(source)
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(zlib.crc32(str(rel).encode()))
            arr = np.asarray(Image.open(image))
            if mod == "ct":
                arr = shift_ct(arr if arr.ndim == 2 else arr.mean(-1), rng)
            else:
                arr = shift_dermoscopy(
                    arr[..., :3] if arr.ndim == 3 else np.stack([arr] * 3, -1), rng
                )
            Image.fromarray(arr).save(dst)
    return out


# ---------------------------------------------------------------------------- measurements
def dice_on(seg, data: Path, limit: int | None) -> dict:
    vis = seg.model.vision
    ds = ManifestDataset(
        data, "test", image_size=seg.image_size, mean=vis.mean, std=vis.std, prompt="all"
    )
    return evaluate(seg.model, ds, batch_size=16, limit=limit)


def zero_shot(seg, data: Path) -> dict:
    """Top-1 per modality with the shipped label sets and templates; None where no labels."""
    from prompts import load_labels

    out = {}
    for mod, (label_set, templates) in ZERO_SHOT.items():
        table = load_labels(label_set)
        try:
            images, labels = image_labels(data, "test", mod)
        except ValueError:
            continue
        keep = [i for i, lab in enumerate(labels) if lab in table]
        if not keep:
            continue
        res = evaluate_classification(
            seg,
            [images[i] for i in keep],
            [labels[i] for i in keep],
            list(table),
            prompts=list(table.values()),
            templates=templates,
        )
        out[mod] = res["top1"]
    out["mean"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def base_checkpoint(model: str, work: Path, seed: int) -> Path:
    """A checkpoint directory holding the base weights (a random init is seeded, saved once)."""
    torch.manual_seed(seed)
    net, cfg, meta = resolve(model)
    if Path(model, WEIGHTS).is_file():
        return Path(model).resolve()
    if not meta.get("random_init"):
        from vlseg.registry import WEIGHTS_DIR

        return (WEIGHTS_DIR / model).resolve()
    path = work / "base"
    print(f"note: {model!r} has no trained weights; the base is a random init ({path})")
    if not (path / WEIGHTS).is_file():
        save_checkpoint(net, cfg, path)
    return path.resolve()


def full_finetune(args, base: Path, shifted: Path, shots: int, out: Path) -> dict:
    """Fine-tune on the same few-shot images: every parameter (``--full-scope all``) or what
    the model config lets train (``config``)."""
    overrides = FULL_SCOPE[args.full_scope]
    chosen = few_shot_records(shifted, "train", shots, args.seed)
    rest = [r for r in read_manifest(shifted) if r.split != "train"]
    subset = write_manifest(chosen + rest, shifted / f"fewshot_{shots}_seed{args.seed}.jsonl")
    cfg = TrainConfig(
        init=str(base),
        data=str(subset),
        out=str(out),
        epochs=10_000,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr_full,
        lr_encoder=args.lr_full / 10,
        warmup_steps=min(20, args.steps // 5),
        num_workers=args.num_workers,
        val_limit=args.val_limit,
        eval_every=_eval_every(len(chosen), args),
        log_every=1,
        seed=args.seed,
        model_overrides=overrides,
    )
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    train(cfg)
    wall = time.time() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"][1:]  # first: loader start
    steps = [r["sec_per_step"] for r in train_rows]
    compute = [r["compute_sec_per_step"] for r in train_rows if r.get("compute_sec_per_step")]
    seg = vlseg.load(str(out / "best"))
    tuned = load_checkpoint(base, overrides=overrides)[0]
    trainable = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    return {
        "seg": seg,
        "trainable": trainable,
        "bytes": (out / "best" / WEIGHTS).stat().st_size,
        "sec_per_step": float(np.median(steps)) if steps else wall / max(1, args.steps),
        "compute_sec_per_step": float(np.median(compute)) if compute else float("nan"),
    }


def _eval_every(n_records: int, args) -> int:
    """Epochs between validations: about five validations per run."""
    steps_per_epoch = max(1, n_records // args.batch_size)
    return max(1, args.steps // steps_per_epoch // 5)


def tune_one(args, method: str, base: Path, shifted: Path, shots: int, out: Path) -> dict:
    n_records = len(few_shot_records(shifted, "train", shots, args.seed))
    extra = {}
    if method == "lora" and args.lora_towers:
        extra["lora_towers"] = args.lora_towers
    # the method's shipped config (configs/tune/<method>.yaml), then this study's settings
    cfg = load_tune_config(
        TUNE_CONFIGS / f"{method}.yaml",
        model=str(base),
        data=str(shifted),
        out=str(out),
        limit=shots,
        epochs=10_000,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(20, args.steps // 5),
        num_workers=args.num_workers,
        val_limit=args.val_limit,
        eval_limit=args.eval_limit,
        eval_every=_eval_every(n_records, args),
        seed=args.seed,
        resume=False,
        **extra,
    )
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, so the step time is measured
    tune(cfg)
    report = json.loads((out / "eval.json").read_text())
    seg = vlseg.load(str(base), adapter=out / "best")  # reloaded, as a user would
    return {
        "seg": seg,
        "trainable": report["params"]["trainable"],
        "bytes": report["adapter_bytes"],
        "sec_per_step": report["sec_per_step"],
        "compute_sec_per_step": report["compute_sec_per_step"],
        "dice": report["results"]["dice"],  # the best adapter on the shifted test split
    }


# ---------------------------------------------------------------------------- report
def _fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MB"


def markdown(rows: list[dict], before: dict, base_params: int) -> str:
    head = (
        "| method | shots | trainable params | % of model | adapter | s/step | compute s/step | "
        "x full FT | Dice before | Dice after | gap recovered | zero-shot before | "
        "zero-shot after |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    full = {r["shots"]: r for r in rows if r["method"] == "full fine-tuning"}
    for r in rows:
        ref = full.get(r["shots"])
        ratio = r["compute_sec_per_step"] / ref["compute_sec_per_step"] if ref else float("nan")
        gap = (ref["dice"] - before["dice"]) if ref else float("nan")
        recovered = (r["dice"] - before["dice"]) / gap if gap and gap > 0 else float("nan")
        lines.append(
            f"| {r['method']} | {r['shots']} | {r['trainable']:,} | "
            f"{100 * r['trainable'] / base_params:.3f} | {_fmt_bytes(r['bytes'])} | "
            f"{r['sec_per_step']:.3f} | {r['compute_sec_per_step']:.3f} | {ratio:.2f} | "
            f"{before['dice']:.4f} | {r['dice']:.4f} | {recovered:.0%} | "
            f"{before['zero_shot']['mean']:.3f} | {r['zero_shot']['mean']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="phantom-tiny", help="base: registered name or ckpt dir")
    p.add_argument("--data", default=None, help="source manifest dataset (default: generate)")
    p.add_argument("--n", type=int, default=800, help="phantoms to generate (80/10/10 split)")
    p.add_argument("--size", type=int, default=256, help="generated phantom side in pixels")
    p.add_argument("--seed", type=int, default=11, help="phantom seed and few-shot draw seed")
    p.add_argument(
        "--shots", type=int, nargs="+", default=[64], help="labelled images, e.g. 16 64 256"
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--no-full", action="store_true", help="skip the full fine-tuning reference")
    p.add_argument(
        "--shift",
        choices=["vocab", "scanner"],
        default="vocab",
        help="target domain: new vocabulary (German clinical terms in the prompts) or another "
        "scanner (image post-processing)",
    )
    p.add_argument(
        "--full-scope",
        choices=["all", "config"],
        default="all",
        help="full fine-tuning trains every parameter (all) or what the model config lets train",
    )
    p.add_argument(
        "--lora-towers",
        nargs="+",
        choices=["text", "vision"],
        default=None,
        help="override the LoRA config's towers (default: the config's)",
    )
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="learner lr (default: the config's)")
    p.add_argument("--lr-full", type=float, default=1e-3, help="full fine-tuning decoder lr")
    p.add_argument("--val-limit", type=int, default=200)
    p.add_argument("--eval-limit", type=int, default=600, help="shifted test items evaluated")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--work", default="runs/bench/prompt_tuning", help="datasets and runs")
    p.add_argument("--json", default=None, help="results JSON (default WORK/results.json)")
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="only write the source and shifted datasets (e.g. for `vlseg tune --data`), then stop",
    )
    args = p.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    source = Path(args.data) if args.data else work / f"source_n{args.n}_s{args.seed}"
    if not args.data and not (source / "manifest.jsonl").is_file():
        write_dataset(source, args.n, seed=args.seed, size=args.size, n_heldout=0, progress=True)
    if args.shift == "vocab":
        shifted = make_vocab_shifted(source, work / f"{source.name}_vocab")
    else:
        shifted = make_shifted(source, work / f"{source.name}_shifted")
    if args.prepare_only:
        print(f"source dataset: {source}\nshifted dataset: {shifted}")
        return 0
    base = base_checkpoint(args.model, work, args.seed)
    seg = vlseg.load(str(base))
    base_params = sum(p.numel() for p in seg.model.parameters())
    print(f"base {base} ({base_params:,} parameters); source {source}; shifted {shifted}")
    before = {
        "source_dice": dice_on(seg, source, args.eval_limit)["dice"],
        "dice": dice_on(seg, shifted, args.eval_limit)["dice"],
        "zero_shot": zero_shot(seg, shifted),
    }
    print(f"before tuning: Dice source {before['source_dice']:.4f}, shifted {before['dice']:.4f}")
    rows = []
    for shots in args.shots:
        runs = [(m, lambda m=m, k=shots: tune_one(args, m, base, shifted, k, work / f"{m}_k{k}"))
                for m in args.methods]  # fmt: skip
        if not args.no_full:
            runs.append(("full fine-tuning", lambda k=shots: full_finetune(
                args, base, shifted, k, work / f"full_k{k}")))  # fmt: skip
        for method, run in runs:
            res = run()
            seg_after = res.pop("seg")
            row = {"method": method, "shots": shots, **res}
            if "dice" not in row:
                row["dice"] = dice_on(seg_after, shifted, args.eval_limit)["dice"]
            row["zero_shot"] = zero_shot(seg_after, shifted)
            rows.append(row)
            print(f"{method} k={shots}: Dice {before['dice']:.4f} -> {row['dice']:.4f}")
    table = markdown(rows, before, base_params)
    print("\n" + table)
    result = {
        "args": vars(args),
        "base": str(base),
        "base_params": base_params,
        "source": str(source),
        "shifted": str(shifted),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "before": before,
        "rows": rows,
        "table": table,
        "wall_s": time.time() - t_start,
    }
    out = Path(args.json) if args.json else work / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
