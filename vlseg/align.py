"""Contrastive alignment of the image embedding head on frozen features (LiT-style).

Zero-shot classification and retrieval compare the vision tower's pooled image embedding with
text embeddings. ``align`` trains only the tower's pooling/projection head (and the CLIP
temperature) against the frozen caption embeddings of a manifest, so every weight the
segmentation path uses stays bit-identical. The head's inputs are computed once per image (and
its mirror image) and kept in memory: thousands of steps take minutes on one CPU core.

The head may have a different architecture from the one in ``init`` (e.g. attention pooling
instead of average pooling + linear): ``model`` names the config to build, ``init`` the
checkpoint that provides every other weight.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import load_checkpoint, resolve, save_checkpoint
from .config import load_yaml, save_yaml, to_dict
from .data.io import load_image, write_json
from .data.manifest import captioned_images
from .losses import clip_loss
from .registry import model_config

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
        model, mcfg, meta = resolve(cfg.model)
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
    n = len(tr["cap"])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_frac * cfg.steps))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    def evaluate() -> dict:
        head.eval()
        with torch.no_grad():
            emb = torch.cat(
                [
                    head(va["feats"]["plain"][s : s + 256].float().to(device)).cpu()
                    for s in range(0, len(va["cap"]), 256)
                ]
            )
        head.train()
        res = {}
        for k in (1, 5, 10):
            res.update(recall_at_k(emb, va["caption_emb"], va["cap"], k))
        return res

    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    best, best_state, t0 = -1.0, None, time.time()
    head.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.steps), desc="align", unit="step")
    for step in bar:
        idx = torch.randint(n, (cfg.batch_size,), generator=gen)
        x = tr["feats"]["plain"][idx]
        if "flip" in tr["feats"]:
            use = torch.rand(cfg.batch_size, generator=gen) < 0.5
            x = torch.where(use[:, None, None, None], tr["feats"]["flip"][idx], x)
        cap = tr["cap"][idx].to(device)
        loss = clip_loss(
            head(x.float().to(device)),
            tr["caption_emb"][cap.cpu()].to(device),
            model.logit_scale,
            groups=cap,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        last = step + 1 == cfg.steps
        if (step + 1) % cfg.eval_every == 0 or last:
            row = {"step": step + 1, "loss": loss.item(), "time_s": time.time() - t0, **evaluate()}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            score = np.mean([row[f"t2i_R@{k}"] + row[f"i2t_R@{k}"] for k in (1, 5, 10)])
            if score > best:
                best = score
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                best_scale = model.logit_scale.detach().clone()
                best_row = row
    head.load_state_dict(best_state)
    with torch.no_grad():
        model.logit_scale.copy_(best_scale)
    for p in params:
        p.requires_grad_(False)
    extra: dict = {"align": {"init": cfg.init, **best_row}}
    if vocabulary is not None:  # the segmentation weights are unchanged: so is what they know
        extra["vocabulary"] = vocabulary
    save_checkpoint(model, mcfg, out / "best", extra=extra)
    write_json(out / "best_metrics.json", best_row)
    return out


def load_align_config(path: str | None, overrides: list[str]) -> AlignConfig:
    from .config import _field_names, apply_overrides, from_dict

    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides, valid=_field_names(AlignConfig))
    return from_dict(AlignConfig, data, where=path or "overrides")
