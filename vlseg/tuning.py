"""``vlseg tune``: few-shot prompt tuning (CoOp, CoCoOp, VPT, MaPLe) and LoRA of a frozen model.

The base model stays bit-identical; only a learner of a few thousand parameters trains (plus
the decoder with ``train_decoder``). The run directory mirrors ``vlseg train``: ``metrics.jsonl``,
``curves.png``, ``last/`` and ``best/`` (adapter directories, see ``vlseg.adapters``) and, with
an ``eval_split``, ``eval.json`` with the best adapter's test metrics, parameter counts and step
time. Use an adapter with ``vlseg.load(base, adapter="runs/tune/best")`` or ``--adapter``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    METHODS,
    attach,
    decoder_parameter_names,
    load_adapter_weights,
    parameter_stats,
    read_adapter_config,
    recorded_spec,
    save_adapter,
    state_dict_sha256,
)
from .checkpoint import WEIGHTS, load_checkpoint, resolve, save_checkpoint
from .config import (
    LoopConfig,
    _field_names,
    apply_overrides,
    from_dict,
    load_yaml,
    save_yaml,
    to_dict,
)
from .data.io import write_json
from .data.manifest import ManifestDataset, Record, read_manifest
from .engine import _dist_setup, evaluate, fit, make_datasets
from .vocabulary import vocabulary_of

VPT_MODES = ("auto", "tokens", "pixels", "features")
# TuneConfig fields that define the learner (recorded in adapter.yaml, needed to rebuild it)
LEARNER_FIELDS = (
    "method", "n_ctx", "ctx_init", "deep", "depth", "vpt_tokens", "vpt_mode", "pad_width",
    "maple_grid", "maple_level", "maple_rank", "lora_rank", "lora_alpha", "lora_targets",
    "lora_towers", "train_decoder",
)  # fmt: skip


@dataclass
class TuneConfig(LoopConfig):
    """One run of ``vlseg tune``: the loop settings of ``LoopConfig`` (``model`` is the base
    model, ``lr`` the learner's) plus the learner, few-shot and evaluation settings below."""

    # -- tuning defaults of loop settings (described in LoopConfig)
    out: str = "runs/tune"
    epochs: int = 20
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    val_limit: int | None = 200
    log_every: int = 10
    # -- few-shot data and evaluation
    method: str = "coop"  # coop | cocoop | vpt | maple | lora
    limit: int | None = 64  # labelled images drawn from the train split (None = all of them)
    eval_split: str | None = "test"  # evaluated with the best adapter into eval.json
    eval_limit: int | None = None  # eval_split items (None = all)
    # -- learner
    n_ctx: int = 4  # text context tokens (coop, cocoop, maple)
    ctx_init: str | None = None  # phrase of exactly n_ctx tokens initialising the context
    deep: bool = False  # prompts at the input of later layers too (coop/cocoop/vpt-tokens/maple)
    depth: int | None = None  # layers with prompts when deep (None = all layers)
    vpt_tokens: int = 8  # visual prompt tokens (ViT towers)
    # visual prompt form: auto = tokens on open_clip ViTs; on CNN towers "features" for maple
    # (a shift on a stage's output) and "pixels" for vpt (padding prompt)
    vpt_mode: str = "auto"
    pad_width: int = 4  # width in pixels of the padding prompt (CNN towers: vpt and maple)
    maple_grid: int = 4  # maple, pixels form: g x g colour field projected from the context
    maple_level: int = 2  # maple, features form: prompted CNN stage, 0..3 = stride 4..32
    maple_rank: int = 16  # maple, features form: inner width of the context -> shift map
    lora_rank: int = 2
    lora_alpha: float | None = None  # LoRA scale numerator (None = 2 * rank)
    # layer names to wrap: open_clip ViT/text MLP "c_proj", BERT "value", CNN blocks' "conv2"
    lora_targets: list[str] = field(default_factory=lambda: ["c_proj", "value", "conv2"])
    lora_towers: list[str] = field(default_factory=lambda: ["text", "vision"])
    train_decoder: bool = False  # also tune pyramid neck, fusion, decoder, heads (into the adapter)
    lr_decoder: float = 1e-4  # decoder learning rate (train_decoder)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}; choose one of {', '.join(METHODS)}")
        if self.vpt_mode not in VPT_MODES:
            raise ValueError(f"vpt_mode={self.vpt_mode!r}; choose one of {', '.join(VPT_MODES)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit}: use a number of images >= 1, or null for all")

    def learner_spec(self) -> dict:
        """The learner-defining fields, as stored in ``adapter.yaml``."""
        d = to_dict(self)
        return {k: d[k] for k in LEARNER_FIELDS}


def load_tune_config(
    path: str | os.PathLike | None = None, overrides: list[str] = (), **fields
) -> TuneConfig:
    """A ``TuneConfig`` from a YAML file, then explicit ``fields`` (None = keep), then
    ``key=value`` overrides; unknown keys raise with the valid ones listed."""
    data = load_yaml(path) if path else {}
    data.update({k: v for k, v in fields.items() if v is not None})
    data = apply_overrides(data, list(overrides), valid=_field_names(TuneConfig))
    return from_dict(TuneConfig, data, where=str(path or "overrides"))


def few_shot_records(
    data: str | os.PathLike, split: str, limit: int | None, seed: int
) -> list[Record]:
    """All records of ``limit`` images of ``split``, drawn with ``seed``, modalities in turn.

    Every referring expression (and negative) of a chosen image is kept: a "labelled sample"
    is an image with its masks.
    """
    records = read_manifest(data, split)
    by_image: dict[Path, list[Record]] = {}
    for r in records:
        by_image.setdefault(r.image, []).append(r)
    images = list(by_image)
    if limit is None or limit >= len(images):
        if limit is not None and limit > len(images):
            print(f"note: limit={limit} but split {split!r} has {len(images)} images; using all")
        return records
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Path]] = {}
    for img in images:
        groups.setdefault(by_image[img][0].modality, []).append(img)
    queues = [list(rng.permutation(len(g))) for g in groups.values()]
    chosen: set[Path] = set()
    while len(chosen) < limit:  # round robin over modalities keeps them balanced
        for g, q in zip(groups.values(), queues, strict=True):
            if q and len(chosen) < limit:
                chosen.add(g[int(q.pop(0))])
    return [r for img in images if img in chosen for r in by_image[img]]


def _base_model(cfg: TuneConfig, out: Path, rank: int, world: int):
    """The base model, how adapter.yaml names it, and its recorded request forms (what
    ``vlseg.load`` serves it with). A base without weights (a bare config, random init) is saved
    to ``out/base`` first, so the adapter has a base to load on."""
    model, mcfg, meta = resolve(cfg.model, allow_untrained=True)
    ref = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else str(cfg.model)
    if meta.get("random_init"):
        if rank == 0 and not (out / "base" / WEIGHTS).is_file():
            save_checkpoint(model, mcfg, out / "base")
            print(
                f"note: {cfg.model!r} has no trained weights; its random init is the base, "
                f"saved to {out / 'base'}"
            )
        if world > 1:
            dist.barrier()
        model, mcfg, meta = load_checkpoint(out / "base")
        ref = str((out / "base").resolve())
    return model, mcfg, ref, meta.get("requests")


def _param_groups(model, names: list[str], cfg: TuneConfig) -> list[dict]:
    params = dict(model.named_parameters())
    dec = set(decoder_parameter_names(model)) & set(names)
    groups = [
        {"params": [params[n] for n in names if n not in dec], "lr": cfg.lr, "base_lr": cfg.lr}
    ]
    if dec:
        lr = cfg.lr_decoder
        groups.append({"params": [params[n] for n in names if n in dec], "lr": lr, "base_lr": lr})
    return groups


def tune(cfg: TuneConfig) -> Path:
    """Tune an adapter as configured; returns the run directory (``best/``, ``last/``)."""
    rank, world, device = _dist_setup()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    last_cfg = out / "last" / ADAPTER_CONFIG
    if cfg.resume and last_cfg.is_file():  # before anything is overwritten
        before = read_adapter_config(last_cfg.parent).get("method")
        if before is not None and before != cfg.method:
            raise ValueError(
                f"out={out} holds a {before} run (its last/ adapter); this is a {cfg.method} "
                "run: give another out=, or resume=false to start over there"
            )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(to_dict(cfg), out / "tune_config.yaml")
    model, mcfg, base_ref, requests = _base_model(cfg, out, rank, world)
    base = {"model": base_ref, "name": mcfg.name, "sha256": state_dict_sha256(model)}
    spec = cfg.learner_spec()
    last = out / "last" / ADAPTER_CONFIG
    if cfg.resume and last.is_file():  # resume with the learner form that run was started with
        spec = recorded_spec(read_adapter_config(last.parent), spec)
    torch.manual_seed(cfg.seed)  # the learner's init does not depend on how the base was built
    names = attach(model, spec)
    model.to(device)
    records = few_shot_records(cfg.data, cfg.train_split, cfg.limit, cfg.seed)
    ds, val_ds = make_datasets(cfg, model, mcfg.image_size, train_records=records)
    stats = parameter_stats(model, names)
    info = {
        "limit": cfg.limit,
        "n_images": len({r.image for r in records}),
        "data": cfg.data,
        # words the adapter was tuned on: they add to the base model's (vlseg.vocabulary)
        "vocabulary": vocabulary_of(t for r in records for t in r.prompts),
    }
    if rank == 0:
        print(
            f"{cfg.method}: {stats['trainable']:,} trainable parameters "
            f"({100 * stats['fraction']:.4f}% of {stats['base']:,}); "
            f"{info['n_images']} images, {len(ds)} expressions"
        )

    def save(path: Path, extra: dict) -> None:
        save_adapter(model, path, spec=spec, base=base, names=names, extra={**info, **extra})

    def restore(path: Path) -> None:
        load_adapter_weights(model, path, names)

    summary = fit(
        model,
        cfg,
        ds,
        val_ds,
        save=save,
        restore=restore,
        param_groups=_param_groups(model, names, cfg),
        rank=rank,
        world=world,
        device=device,
    )
    if rank == 0 and cfg.eval_split:
        restore(out / "best")
        test = ManifestDataset(
            cfg.data,
            cfg.eval_split,
            image_size=mcfg.image_size,
            mean=model.vision.mean,
            std=model.vision.std,
            prompt="all",
        )
        res = evaluate(
            model,
            test,
            batch_size=cfg.batch_size,
            device=device,
            limit=cfg.eval_limit,
            strip_requests=True,  # as vlseg eval and Segmenter.segment give them
            requests=requests,
        )
        report = {
            "method": cfg.method,
            "split": cfg.eval_split,
            "results": res,
            "params": stats,
            "adapter_bytes": (out / "best" / ADAPTER_WEIGHTS).stat().st_size,
            **summary,
            **info,
        }
        write_json(out / "eval.json", report)
        print(
            f"{cfg.eval_split}: dice {res['dice']:.4f} mIoU {res['mIoU']:.4f} presence AUROC "
            f"{res['presence_auroc']:.4f} (best adapter; {out / 'eval.json'})"
        )
    if world > 1:
        dist.destroy_process_group()
    return out
