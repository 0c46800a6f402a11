"""Training and evaluation loops as plain functions.

Runs unchanged on one CPU, one GPU, or under ``torchrun --nproc_per_node N``
(DistributedDataParallel, gloo on CPU and nccl on GPU).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig, from_dict, save_yaml, to_dict
from .data.io import atomic_write, load_mask
from .data.manifest import ManifestDataset, collate
from .losses import clip_loss, mask_loss
from .metrics import SegmentationMeter, binary_auroc
from .registry import build_model, model_config
from .vocabulary import vocabulary_of


def _dist_setup() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def _param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    enc, dec = [], []
    if cfg.train_only:
        # Train only the named parameters (e.g. the image projection for CLIP alignment); the
        # rest, and so the segmentation path, stays exactly as loaded.
        for name, p in model.named_parameters():
            p.requires_grad_(any(name.startswith(prefix) for prefix in cfg.train_only))
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"train_only={cfg.train_only} matches no parameter")
    for name, p in model.named_parameters():
        if p.requires_grad:
            (enc if name.startswith(("vision.visual.", "text.")) else dec).append(p)
    groups = [{"params": dec, "lr": cfg.lr, "base_lr": cfg.lr}]
    if enc:
        groups.append({"params": enc, "lr": cfg.lr_encoder, "base_lr": cfg.lr_encoder})
    return groups


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _tokenize(model, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    tok = model.text.tokenize(texts)
    return tok["ids"].to(device), tok["mask"].to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_loss(
    model, raw_model, batch: dict, captions: list[str], cfg: TrainConfig, device
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch; ``model`` may be DDP-wrapped, ``raw_model`` is the module itself."""
    images = batch["image"].to(device, non_blocking=True)
    masks = batch["mask"].to(device, non_blocking=True)
    positive = batch["positive"].to(device)
    ids, tmask = _tokenize(raw_model, batch["text"], device)
    use_clip = cfg.clip_weight > 0 and any(captions)
    cap_ids, cap_mask = _tokenize(raw_model, captions, device) if use_clip else (None, None)
    out = model(images, ids, tmask, cap_ids, cap_mask)
    loss_mask = mask_loss(
        out["logits"], masks, positive, dice_weight=cfg.dice_weight, bce_weight=cfg.bce_weight
    )
    loss_aux = sum(
        mask_loss(a, masks, positive, dice_weight=cfg.dice_weight, bce_weight=cfg.bce_weight)
        for a in out["aux"]
    ) / max(1, len(out["aux"]))
    loss_pres = F.binary_cross_entropy_with_logits(out["presence"], positive)
    loss = loss_mask + cfg.aux_weight * loss_aux + cfg.presence_weight * loss_pres
    parts = {
        "mask": loss_mask.item(),
        "aux": float(loss_aux.detach()),
        "presence": loss_pres.item(),
    }
    if use_clip:
        groups = torch.tensor([hash(c) for c in captions], device=device)
        loss_clip = clip_loss(
            out["image_embedding"], out["caption_embedding"], out["logit_scale"], groups
        )
        loss = loss + cfg.clip_weight * loss_clip
        parts["clip"] = loss_clip.item()
    parts["loss"] = loss.item()
    return loss, parts


def _captions(ds: ManifestDataset, batch: dict) -> list[str]:
    return [ds.record_for(i).caption or "" for i in batch["index"]]


def _save_trainer_state(path: Path, optimizer, state: dict) -> None:
    tensors, meta = {}, {"param_groups": [], **state}
    sd = optimizer.state_dict()
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{idx}.{k}"] = (
                v.detach().cpu().contiguous() if torch.is_tensor(v) else (torch.tensor(v))
            )
    meta["param_groups"] = sd["param_groups"]
    tmp = path / ".optimizer.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, path / "optimizer.safetensors")
    (path / ".trainer_state.json.tmp").write_text(json.dumps(meta))
    os.replace(path / ".trainer_state.json.tmp", path / "trainer_state.json")


def _load_trainer_state(path: Path, optimizer) -> dict:
    meta = json.loads((path / "trainer_state.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def _plot_curves(metrics_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        axes[0].set_xlabel("step")
        axes[0].legend()
    if val:
        for key in ("dice", "mIoU", "presence_auroc"):
            axes[1].plot(
                [r["step"] for r in val],
                [r.get(key, np.nan) for r in val],
                "o-",
                label=f"val {key}",
            )
        axes[1].set_xlabel("step")
        axes[1].set_ylim(0, 1)
        axes[1].legend()
    fig.tight_layout()
    with atomic_write(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig) -> Path:
    """Train a model as configured; returns the run directory (``last/`` and ``best/`` inside)."""
    rank, world, device = _dist_setup()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(to_dict(cfg), out / "train_config.yaml")
    init_vocabulary = None
    if cfg.init:
        model, mcfg, init_meta = load_checkpoint(cfg.init, overrides=cfg.model_overrides)
        init_vocabulary = init_meta.get("vocabulary")
    else:
        mcfg = model_config(cfg.model)
        if cfg.model_overrides:
            mcfg = from_dict(ModelConfig, {**to_dict(mcfg), **cfg.model_overrides})
        model = build_model(mcfg)
    model.word_dropout, model.sentence_only = cfg.word_dropout, cfg.sentence_only
    model.to(device)
    ds, val_ds = make_datasets(cfg, model, mcfg.image_size)
    # The words the model learns to ground (vlseg.vocabulary), kept with every checkpoint; a
    # fine-tune of a checkpoint that records none knows more words than its data shows: unknown.
    vocabulary = None
    if not cfg.init or init_vocabulary is not None:
        prompts = (t for r in ds.records for t in r.prompts)
        vocabulary = vocabulary_of(prompts, known=init_vocabulary)

    def save(path: Path, extra: dict) -> None:
        if vocabulary is not None:
            extra = {**extra, "vocabulary": vocabulary}
        save_checkpoint(model, mcfg, path, extra=extra)

    def restore(path: Path) -> None:
        last, _, _ = load_checkpoint(path)
        model.load_state_dict(last.state_dict())

    fit(model, cfg, ds, val_ds, save=save, restore=restore, rank=rank, world=world, device=device)
    if world > 1:
        dist.destroy_process_group()
    return out


def make_datasets(
    cfg: TrainConfig, model, image_size: int, *, train_records=None
) -> tuple[ManifestDataset, ManifestDataset]:
    """(train, val) datasets of ``cfg.data``; ``train_records`` replaces the train split's
    records (e.g. a few-shot subset)."""
    vis = model.vision
    ds = ManifestDataset(
        cfg.data if train_records is None else train_records,
        cfg.train_split,
        image_size=image_size,
        mean=vis.mean,
        std=vis.std,
        prompt="random",
        augment=cfg.augment,
        seed=cfg.seed,
    )
    val_ds = ManifestDataset(
        cfg.data,
        cfg.val_split,
        image_size=image_size,
        mean=vis.mean,
        std=vis.std,
        prompt="first",
        augment=False,
        seed=cfg.seed,
    )
    return ds, val_ds


def fit(
    model: torch.nn.Module,
    cfg: TrainConfig,
    ds: ManifestDataset,
    val_ds: ManifestDataset,
    *,
    save: Callable[[Path, dict], None],
    restore: Callable[[Path], None],
    param_groups: list[dict] | None = None,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
) -> dict[str, float]:
    """The optimisation loop shared by ``vlseg train`` and ``vlseg tune``.

    Trains the parameters that require grad; after each evaluated epoch writes ``out/last``
    (through ``save``, plus the optimizer state) and ``out/best``, appends to
    ``out/metrics.jsonl`` and redraws ``out/curves.png``. With ``cfg.resume`` and a previous
    ``out/last``, ``restore`` reloads the weights and the loop continues where it stopped.

    Args:
        model: the module to train, already on ``device``.
        cfg: loop settings (epochs, max_steps, batch_size, lr, loss weights, ...).
        ds, val_ds: training and validation datasets.
        save: writes the weights (and ``extra`` metadata) as a directory at the given path.
        restore: loads the weights saved by ``save`` from the given directory.
        param_groups: optimizer groups, each with "params", "lr" and "base_lr"; default:
            decoder at ``cfg.lr`` and trainable encoder parameters at ``cfg.lr_encoder``.

    Returns:
        {"steps": optimizer steps done, "best": best validation Dice, "sec_per_step": median
        wall time of an optimizer step in this call (NaN with fewer than two steps an epoch),
        "compute_sec_per_step": the same without the time spent waiting for data}.
    """
    device = device or torch.device("cpu")
    out = Path(cfg.out)
    sampler = (
        DistributedSampler(ds, seed=cfg.seed)
        if world > 1
        else RandomSampler(ds, generator=torch.Generator().manual_seed(cfg.seed))
    )
    loader = DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        drop_last=True,
    )
    if len(loader) == 0:
        raise ValueError(
            f"{len(ds)} training items do not fill one batch of batch_size={cfg.batch_size}; "
            "lower batch_size or use more data"
        )
    groups = param_groups if param_groups is not None else _param_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(loader) // cfg.grad_accum)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    step, start_epoch, best = 0, 0, -1.0
    if cfg.resume and (out / "last" / "trainer_state.json").is_file():
        restore(out / "last")
        meta = _load_trainer_state(out / "last", optimizer)
        step, start_epoch, best = meta["step"], meta["epoch"] + 1, meta.get("best", -1.0)
        if rank == 0:
            print(f"resumed from {out / 'last'} at epoch {start_epoch}, step {step}")
    ddp = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    use_amp = cfg.amp and device.type == "cuda"
    metrics_path = out / "metrics.jsonl"
    step_times: list[float] = []  # between optimizer steps, first step of an epoch excluded
    compute_times: list[float] = []  # the same without waiting for the data loader
    compute = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total:
            break
        ds.set_epoch(epoch)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        model.train()
        if getattr(cfg, "train_only", None):
            # Frozen BatchNorm layers keep their running statistics: only the named
            # parameters may change in a train_only run.
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in m.parameters(recurse=False)
                ):
                    m.eval()
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0, dynamic_ncols=True
        )
        t0 = t_prev = time.time()
        first_in_epoch = True
        for micro, batch in enumerate(bar):
            t_in = time.time()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, parts = compute_loss(ddp, model, batch, _captions(ds, batch), cfg, device)
            (loss / cfg.grad_accum).backward()
            if (micro + 1) % cfg.grad_accum:
                _sync(device)
                compute += time.time() - t_in
                continue
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * _lr_factor(step, cfg.warmup_steps, total)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            _sync(device)  # GPU work is asynchronous: time it, not its launch
            now = time.time()
            compute += now - t_in
            if not first_in_epoch:  # the first one also pays for starting the loader
                step_times.append(now - t_prev)
                compute_times.append(compute)
            compute = 0.0
            t_prev, first_in_epoch = now, False
            bar.set_postfix(loss=f"{parts['loss']:.3f}", mask=f"{parts['mask']:.3f}")
            if rank == 0 and step % cfg.log_every == 0:
                row = {
                    "kind": "train",
                    "step": step,
                    "epoch": epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    "sec_per_step": (time.time() - t0) / cfg.log_every,
                    "compute_sec_per_step": float(np.median(compute_times[-cfg.log_every :]))
                    if compute_times
                    else None,
                    **parts,
                }
                t0 = time.time()
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            if step >= total:
                break
        if rank == 0 and (
            (epoch + 1) % cfg.eval_every == 0 or step >= total or epoch + 1 == cfg.epochs
        ):
            res = evaluate(
                model,
                val_ds,
                batch_size=cfg.batch_size,
                device=device,
                limit=cfg.val_limit,
                original_resolution=False,
            )
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps({"kind": "val", "step": step, "epoch": epoch, **res}) + "\n")
            print(
                f"epoch {epoch + 1}: val dice {res['dice']:.4f} mIoU {res['mIoU']:.4f} "
                f"presence AUROC {res['presence_auroc']:.4f}"
            )
            save(out / "last", {"step": step, "epoch": epoch})
            _save_trainer_state(
                out / "last",
                optimizer,
                {"step": step, "epoch": epoch, "best": max(best, res["dice"])},
            )
            if res["dice"] > best:
                best = res["dice"]
                save(out / "best", {"step": step, "epoch": epoch, "val": res})
            _plot_curves(metrics_path, out / "curves.png")
        if world > 1:
            dist.barrier()
    sec = float(np.median(step_times)) if step_times else float("nan")
    comp = float(np.median(compute_times)) if compute_times else float("nan")
    return {"steps": step, "best": best, "sec_per_step": sec, "compute_sec_per_step": comp}


@torch.no_grad()
def predict_batch(model, images: torch.Tensor, texts: list[str], device) -> dict[str, torch.Tensor]:
    """Mask probabilities (B x 1 x H x W at the input size) and presence probabilities (B)."""
    ids, mask = _tokenize(model, texts, device)
    out = model(images.to(device), ids, mask)
    logits = F.interpolate(
        out["logits"], size=images.shape[-2:], mode="bilinear", align_corners=False
    )
    return {"probs": torch.sigmoid(logits), "presence": torch.sigmoid(out["presence"])}


@torch.no_grad()
def evaluate(
    model,
    ds: ManifestDataset,
    *,
    batch_size: int = 16,
    device=None,
    limit: int | None = None,
    original_resolution: bool = True,
    threshold: float = 0.5,
    progress: bool = False,
) -> dict[str, float]:
    """Referring segmentation metrics over a dataset.

    A prediction is the thresholded mask gated by the presence score (an absent verdict predicts
    an empty mask), compared at the original image resolution by default. Returns Dice, mIoU,
    oIoU, Prec@0.5/0.7/0.9 and HD95 over positive expressions, Dice over all expressions
    (``dice_all``: a correct "not found" on a negative scores 1), and presence AUROC.
    """
    device = device or next(model.parameters()).device
    model.eval()
    n = len(ds) if limit is None else min(limit, len(ds))
    # An evenly spaced subset keeps both modalities and all targets when limited.
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int) if n < len(ds) else np.arange(n)
    pos_meter = SegmentationMeter(with_hd95=original_resolution)
    all_meter = SegmentationMeter(with_hd95=False)
    scores, labels = [], []
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="eval"):
        batch = collate([ds[int(i)] for i in idx[start : start + batch_size]])
        pred = predict_batch(model, batch["image"], batch["text"], device)
        for j in range(len(batch["text"])):
            present = float(pred["presence"][j]) > threshold
            probs = pred["probs"][j : j + 1]
            if original_resolution:
                rec = ds.record_for(batch["index"][j])
                probs = F.interpolate(
                    probs, size=tuple(batch["orig_size"][j]), mode="bilinear", align_corners=False
                )
                target = (
                    load_mask(rec.mask)
                    if rec.mask is not None
                    else np.zeros(batch["orig_size"][j], dtype=bool)
                )
            else:
                target = batch["mask"][j, 0].numpy() > 0.5
            mask = (probs[0, 0].cpu().numpy() > threshold) & present
            positive = bool(batch["positive"][j] > 0.5)
            all_meter.update(mask, target)
            if positive:
                pos_meter.update(mask, target)
            scores.append(float(pred["presence"][j]))
            labels.append(positive)
    res = pos_meter.compute()
    res["dice_all"] = all_meter.compute()["dice"]
    res["presence_auroc"] = binary_auroc(np.array(scores), np.array(labels))
    res["presence_acc"] = float(np.mean((np.array(scores) > threshold) == np.array(labels)))
    res["n_all"] = n
    return {k: float(v) for k, v in res.items()}
