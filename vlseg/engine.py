"""Training loops as plain functions: ``train`` (``vlseg train``) and ``fit``, the loop that
``vlseg tune`` shares, composed of the parts in :mod:`vlseg.training`. Evaluation lives in
:mod:`vlseg.evaluation` (``evaluate`` is re-exported here).

Runs unchanged on one CPU, one GPU, or under ``torchrun --nproc_per_node N``
(DistributedDataParallel, gloo on CPU and nccl on GPU).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import LoopConfig, ModelConfig, TrainConfig, from_dict, save_yaml, to_dict
from .data.manifest import ManifestDataset
from .evaluation import evaluate
from .losses import clip_loss, mask_loss
from .registry import build_model, model_config
from .requests import request_forms_of
from .serving import ServingConfig, serving_of
from .training import (
    Checkpointer,
    MetricsLog,
    StepTimer,
    freeze_frozen_batchnorm,
    make_loader,
    optimizer_step,
    total_steps,
    trainable_group,
    warmup_cosine,
)
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


def train_param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """Optimizer groups of ``vlseg train``: the decoder at ``cfg.lr``, trainable encoder
    parameters at ``cfg.lr_encoder``; with ``cfg.train_only``, only the parameters under those
    name prefixes train (the rest is frozen here)."""
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


def _tokenize(model, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    tok = model.text.tokenize(texts)
    return tok["ids"].to(device), tok["mask"].to(device)


def compute_loss(
    model, raw_model, batch: dict, captions: list[str], cfg: LoopConfig, device
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


def _tower_trains(model, cfg: TrainConfig) -> bool:
    """Whether this run updates the image tower's weights (``vision.visual.``)."""
    tower = [(n, p) for n, p in model.named_parameters() if n.startswith("vision.visual.")]
    if cfg.train_only:
        return any(n.startswith(tuple(cfg.train_only)) for n, _ in tower)
    return any(p.requires_grad for _, p in tower)


def train(cfg: TrainConfig) -> Path:
    """Train a model as configured; returns the run directory (``last/`` and ``best/`` inside)."""
    rank, world, device = _dist_setup()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(to_dict(cfg), out / "train_config.yaml")
    init_vocabulary = init_requests = None
    # How the result is served (threshold, window, labels): a fine-tune keeps its init's
    # settings (its calibration and out-of-domain fit no longer hold, so they are dropped:
    # rerun vlseg calibrate); a new model starts from the defaults.
    serving = ServingConfig()
    if cfg.init:
        model, mcfg, init_meta = load_checkpoint(cfg.init, overrides=cfg.model_overrides)
        init_vocabulary = init_meta.get("vocabulary")
        init_requests = init_meta.get("requests")
        serving = replace(serving_of(init_meta), calibration=None, ood_threshold=None)
        if model.zeroshot_head is not None and _tower_trains(model, cfg):
            # the zero-shot head reads the image tower's features, which this run moves
            model.zeroshot_head = None
            mcfg = replace(mcfg, zeroshot_head=False)
            if rank == 0:
                print(
                    "the image tower trains: the init's zero-shot head no longer matches it and "
                    "is dropped (classify uses the tower's head); rerun vlseg align "
                    "target=zeroshot_head on the result to train a new one"
                )
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
    # The same for request forms ("segment ...", "show me ..."; vlseg.requests).
    vocabulary = requests = None
    if not cfg.init or init_vocabulary is not None:
        prompts = [t for r in ds.records for t in r.prompts]
        vocabulary = vocabulary_of(prompts, known=init_vocabulary)
    if not cfg.init or init_requests is not None:
        requests = request_forms_of((t for r in ds.records for t in r.prompts), init_requests)

    def save(path: Path, extra: dict) -> None:
        extra = {**extra, "serving": serving.to_dict()}
        if vocabulary is not None:
            extra = {**extra, "vocabulary": vocabulary}
        if requests is not None:
            extra = {**extra, "requests": requests}
        save_checkpoint(model, mcfg, path, extra=extra)

    def restore(path: Path) -> None:
        last, _, _ = load_checkpoint(path)
        model.load_state_dict(last.state_dict())

    fit(
        model,
        cfg,
        ds,
        val_ds,
        save=save,
        restore=restore,
        param_groups=train_param_groups(model, cfg),
        freeze_bn=bool(cfg.train_only),  # frozen BatchNorm layers keep their statistics too
        rank=rank,
        world=world,
        device=device,
    )
    if world > 1:
        dist.destroy_process_group()
    return out


def make_datasets(
    cfg: LoopConfig, model, image_size: int, *, train_records=None
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
    cfg: LoopConfig,
    ds: ManifestDataset,
    val_ds: ManifestDataset,
    *,
    save: Callable[[Path, dict], None],
    restore: Callable[[Path], None],
    param_groups: list[dict] | None = None,
    freeze_bn: bool = False,
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
            every parameter that requires grad at ``cfg.lr``.
        freeze_bn: keep BatchNorm layers without trainable parameters in eval mode, so a
            partly frozen model's running statistics do not change either.

    Returns:
        {"steps": optimizer steps done, "best": best validation Dice, "sec_per_step": median
        wall time of an optimizer step in this call (NaN with fewer than two steps an epoch),
        "compute_sec_per_step": the same without the time spent waiting for data}.
    """
    device = device or torch.device("cpu")
    out = Path(cfg.out)
    loader, sampler = make_loader(ds, cfg, world)
    groups = param_groups if param_groups is not None else trainable_group(model, cfg.lr)
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    total = total_steps(cfg, len(loader))
    ckpt = Checkpointer(out, save=save, restore=restore)
    step, start_epoch = 0, 0
    if cfg.resume and (state := ckpt.resume(optimizer)) is not None:
        step, start_epoch = state.step, state.epoch + 1
        if rank == 0:
            print(f"resumed from {ckpt.last} at epoch {start_epoch}, step {step}")
    ddp = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    log = MetricsLog(out / "metrics.jsonl") if rank == 0 else None
    timer = StepTimer(device)
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total:
            break
        ds.set_epoch(epoch)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        model.train()
        if freeze_bn:
            freeze_frozen_batchnorm(model)
        step = _train_epoch(
            ddp, model, loader, optimizer, cfg, epoch=epoch, step=step, total=total,
            timer=timer, log=log, device=device,
        )  # fmt: skip
        last = step >= total or epoch + 1 == cfg.epochs
        if log is not None and ((epoch + 1) % cfg.eval_every == 0 or last):
            res = evaluate(
                model,
                val_ds,
                batch_size=cfg.batch_size,
                device=device,
                limit=cfg.val_limit,
                original_resolution=False,
            )
            log.append({"kind": "val", "step": step, "epoch": epoch, **res})
            print(
                f"epoch {epoch + 1}: val dice {res['dice']:.4f} mIoU {res['mIoU']:.4f} "
                f"presence AUROC {res['presence_auroc']:.4f}"
            )
            ckpt.save_last(optimizer, step=step, epoch=epoch, score=res["dice"])
            ckpt.save_best_if_better(res["dice"], {"step": step, "epoch": epoch, "val": res})
            log.plot(out / "curves.png")
        if world > 1:
            dist.barrier()
    return {"steps": step, "best": ckpt.best, **timer.summary()}


def _train_epoch(
    ddp: torch.nn.Module,
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: LoopConfig,
    *,
    epoch: int,
    step: int,
    total: int,
    timer: StepTimer,
    log: MetricsLog | None,
    device: torch.device,
) -> int:
    """One pass over ``loader`` (stopping at ``total`` steps); returns the step count after it.

    ``ddp`` is ``model`` itself or its DistributedDataParallel wrapper; ``log`` is None on
    ranks other than 0.
    """
    use_amp = cfg.amp and device.type == "cuda"
    ds = loader.dataset
    bar = tqdm(
        loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=log is None, dynamic_ncols=True
    )
    timer.start_epoch()
    for micro, batch in enumerate(bar):
        timer.start()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, parts = compute_loss(ddp, model, batch, _captions(ds, batch), cfg, device)
        (loss / cfg.grad_accum).backward()
        if (micro + 1) % cfg.grad_accum:  # accumulate the next micro-batch's gradients
            timer.stop(stepped=False)
            continue
        factor = warmup_cosine(step, warmup=cfg.warmup_steps, total=total)
        optimizer_step(optimizer, factor, clip=model.parameters(), max_norm=1.0)
        step += 1
        timer.stop(stepped=True)
        bar.set_postfix(loss=f"{parts['loss']:.3f}", mask=f"{parts['mask']:.3f}")
        if log is not None and step % cfg.log_every == 0:
            lr = optimizer.param_groups[0]["lr"]
            row = {"kind": "train", "step": step, "epoch": epoch, "lr": lr}
            log.append({**row, **timer.rates(cfg.log_every), **parts})
        if step >= total:
            break
    return step
