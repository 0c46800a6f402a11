"""Contrastive alignment of the image embedding head on frozen features (LiT-style).

Zero-shot classification and retrieval compare the vision tower's pooled image embedding with
text embeddings. ``align`` trains only the tower's pooling/projection head (and the CLIP
temperature) against the frozen caption embeddings of a manifest, so every weight the
segmentation path uses stays bit-identical. The head's inputs are computed once per image (and
its mirror image) and kept in memory: thousands of steps take minutes on one CPU core.

The head may have a different architecture from the one in ``init`` (e.g. attention pooling
instead of average pooling + linear): ``model`` names the config to build, ``init`` the
checkpoint that provides every other weight.

The loop draws batches from the cached features; its schedule, optimizer step, ``metrics.jsonl``
and ``best/`` checkpoint are those of ``vlseg train`` (:mod:`vlseg.training`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .atomic import write_json
from .checkpoint import load_checkpoint, resolve, save_checkpoint
from .config import load_yaml, save_yaml, to_dict
from .data.io import load_image
from .data.manifest import captioned_images
from .losses import clip_loss
from .registry import model_config
from .training import Checkpointer, MetricsLog, optimizer_step, warmup_cosine

HEAD = "vision.visual.head."


@dataclass
class AlignConfig:
    """``vlseg align`` settings (YAML keys; unknown keys are errors)."""

    data: str = ""  # manifest dataset with captions
    out: str = "runs/align"  # run directory; the aligned checkpoint goes to ``out/best``
    model: str | None = None  # config (name/YAML) whose head to build; None = init's config
    init: str | None = None  # checkpoint providing all non-head weights; None = model's weights
    split: str = "train"
    val_split: str = "val"
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1.0e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    flip: bool = True  # also cache the mirrored image (augmentation)
    eval_every: int = 250
    encode_batch: int = 64
    seed: int = 0
    device: str | None = None


def _build(cfg: AlignConfig):
    """(model, model config, recorded vocabulary): ``model``'s architecture with ``init``'s
    weights outside the head."""
    if cfg.init is None:
        if cfg.model is None:
            raise ValueError("set init (a checkpoint dir) or model (a registered name)")
        model, mcfg, meta = resolve(cfg.model, allow_untrained=True)
        return model, mcfg, meta.get("vocabulary")
    overrides = None if cfg.model is None else to_dict(model_config(cfg.model))
    model, mcfg, meta = load_checkpoint(cfg.init, overrides=overrides, rebuild=(HEAD,))
    return model, mcfg, meta.get("vocabulary")


def _vision_head(model) -> torch.nn.Module:
    head = getattr(model.vision.visual, "head", None)
    if not isinstance(head, torch.nn.Module):
        raise ValueError(
            "align needs a vision tower with a separate pooling/projection head (timm towers); "
            "for this tower train the embedding with `vlseg train` and train_only"
        )
    return head


@torch.no_grad()
def _head_inputs(model, images: list[Path], image_size: int, cfg: AlignConfig, device) -> dict:
    """Inputs of the vision head for each image (and its mirror), captured by a forward hook."""
    from .predictor import Segmenter

    head = _vision_head(model)
    seg = Segmenter(model, image_size=image_size, device=device)
    grabbed: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, args, out: grabbed.append(args[0].detach()))
    out: dict[str, list[torch.Tensor]] = {"plain": [], "flip": []}
    try:
        for s in tqdm(range(0, len(images), cfg.encode_batch), desc="encode", unit="batch"):
            x = seg.preprocess([load_image(p) for p in images[s : s + cfg.encode_batch]])
            for key, xx in (("plain", x), ("flip", x.flip(-1))):
                if key == "flip" and not cfg.flip:
                    continue
                grabbed.clear()
                model.vision(xx)
                out[key].append(grabbed[-1].half().cpu())
    finally:
        hook.remove()
    return {k: torch.cat(v) for k, v in out.items() if v}


@torch.no_grad()
def _caption_embeddings(model, captions: list[str], device) -> torch.Tensor:
    embs = []
    for s in range(0, len(captions), 256):
        tok = model.text.tokenize(captions[s : s + 256])
        e = model.encode_text(tok["ids"].to(device), tok["mask"].to(device)).embedding
        embs.append(F.normalize(e.float(), dim=-1).cpu())
    return torch.cat(embs)


def recall_at_k(img: torch.Tensor, txt: torch.Tensor, cap_of_img: torch.Tensor, k: int) -> dict:
    """Retrieval recall@k over distinct captions: text->image counts a hit when any image with
    that caption is in the top k; image->text when the image's own caption is."""
    s = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()  # images x captions
    kk = min(k, s.shape[0])
    top_img = s.t().topk(kk, dim=1).indices  # captions x k
    present = torch.unique(cap_of_img)
    t2i = (cap_of_img[top_img[present]] == present[:, None]).any(1).float().mean()
    top_txt = s.topk(min(k, s.shape[1]), dim=1).indices
    i2t = (top_txt == cap_of_img[:, None]).any(1).float().mean()
    return {f"t2i_R@{k}": float(t2i), f"i2t_R@{k}": float(i2t)}


def align(cfg: AlignConfig) -> Path:
    """Train the image head as configured; returns the run directory (``best/`` inside)."""
    if not cfg.data:
        raise ValueError("set data: a manifest dataset with captions (e.g. data/phantoms)")
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(to_dict(cfg), out / "align_config.yaml")
    model, mcfg, vocabulary = _build(cfg)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head = _vision_head(model)
    params = [*head.parameters(), model.logit_scale]
    for p in params:
        p.requires_grad_(True)

    splits = {}
    for name in (cfg.split, cfg.val_split):
        pairs = captioned_images(cfg.data, name)
        images, captions = [r.image for r in pairs], [r.caption for r in pairs]
        distinct = sorted(set(captions))
        splits[name] = {
            "feats": _head_inputs(model, images, mcfg.image_size, cfg, device),
            "caption_emb": _caption_embeddings(model, distinct, device),
            "cap": torch.tensor([distinct.index(c) for c in captions]),
        }
    tr, va = splits[cfg.split], splits[cfg.val_split]
    meta = {} if vocabulary is None else {"vocabulary": vocabulary}  # segmentation unchanged

    def save(path: Path, extra: dict) -> None:
        save_checkpoint(model, mcfg, path, extra={**extra, **meta})

    best_row = _train_head(model, head, params, tr, va, cfg, device, save=save)
    write_json(out / "best_metrics.json", best_row)
    return out


def _sample(feats: dict, cap: torch.Tensor, batch_size: int, gen: torch.Generator):
    """A random batch of cached head inputs (each mirrored with probability 1/2 when the
    mirror images were cached) and their caption indices."""
    idx = torch.randint(len(cap), (batch_size,), generator=gen)
    x = feats["plain"][idx]
    if "flip" in feats:
        use = torch.rand(batch_size, generator=gen) < 0.5
        x = torch.where(use[:, None, None, None], feats["flip"][idx], x)
    return x, cap[idx]


@torch.no_grad()
def _head_recall(head: torch.nn.Module, va: dict, device) -> dict[str, float]:
    """Retrieval recall@1/5/10 of the head's embeddings of the validation images."""
    head.eval()
    feats = va["feats"]["plain"]
    emb = torch.cat(
        [head(feats[s : s + 256].float().to(device)).cpu() for s in range(0, len(feats), 256)]
    )
    head.train()
    res = {}
    for k in (1, 5, 10):
        res.update(recall_at_k(emb, va["caption_emb"], va["cap"], k))
    return res


def _train_head(model, head, params, tr: dict, va: dict, cfg: AlignConfig, device, *, save):
    """Train ``params`` (the head and the CLIP temperature) with the CLIP loss on the cached
    features ``tr``; every ``eval_every`` steps log the validation recall to
    ``out/metrics.jsonl`` and write ``out/best`` (through ``save``) when the mean recall is the
    best so far. Returns the best evaluation's metrics row."""
    out = Path(cfg.out)
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": cfg.lr, "base_lr": cfg.lr}], weight_decay=cfg.weight_decay
    )
    warmup = max(1, int(cfg.warmup_frac * cfg.steps))
    log = MetricsLog(out / "metrics.jsonl", fresh=True)
    ckpt = Checkpointer(out, save=save)  # best/ only: a run takes minutes, none is resumed
    best_row, t0 = None, time.time()
    head.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.steps), desc="align", unit="step")
    for step in bar:
        x, cap = _sample(tr["feats"], tr["cap"], cfg.batch_size, gen)
        emb = head(x.float().to(device))  # (B, E)
        txt = tr["caption_emb"][cap].to(device)  # (B, E)
        loss = clip_loss(emb, txt, model.logit_scale, groups=cap.to(device))
        loss.backward()
        optimizer_step(optimizer, warmup_cosine(step, warmup=warmup, total=cfg.steps))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row = {"step": step + 1, "loss": loss.item(), "time_s": time.time() - t0}
            row.update(_head_recall(head, va, device))
            log.append(row)
            score = np.mean([row[f"t2i_R@{k}"] + row[f"i2t_R@{k}"] for k in (1, 5, 10)])
            if ckpt.save_best_if_better(score, {"align": {"init": cfg.init, **row}}):
                best_row = row
    if best_row is None:
        raise RuntimeError(f"align: no evaluation gave a finite recall; nothing saved to {out}")
    return best_row


def load_align_config(path: str | None, overrides: list[str]) -> AlignConfig:
    from .config import _field_names, apply_overrides, from_dict

    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides, valid=_field_names(AlignConfig))
    return from_dict(AlignConfig, data, where=path or "overrides")
