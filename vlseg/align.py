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
and ``best/`` checkpoint are those of ``vlseg train`` (:mod:`vlseg.training`). The checkpoint
keeps ``init``'s serving settings and out-of-domain fit (``ood.safetensors``): both are computed
from parts that alignment does not touch (the decoder, the multi-scale maps).

Wording-robust alignment (``paraphrases: N``): each image is paired with ``N`` captions from
:mod:`vlseg.paraphrase` (what its records state, in varied wording) besides its manifest caption;
every step draws one of them per image (the manifest caption with probability
``original_frac``), or the mean embedding of ``paraphrase_average`` of them. Images whose facts
are identical, and images drawn with the same text, count as positives of each other; with
``fact_positives`` (the default) so does every image of the batch that a drawn paraphrase is
true of (its claims, `vlseg.paraphrase.fact_claims`: "CT image" drawn for one CT image is a
positive of every CT image, not a negative of the others). With
``hard_negatives: H`` each image also gets one of ``H`` contradicting captions of its own
modality (another lesion class, the other hepatic label, an organ in / out of the slice) as an
extra negative in its image-to-text row. The text tower is frozen, so every caption is embedded
once before training. Validation then also scores zero-shot classification with the generator's
own class phrasings (modality, dermoscopy class, hepatic lesion, spleen on the slice), and
``best/`` is the step with the best mean of that and the retrieval recall.

Which head trains (``target``): ``head`` retrains the tower's own embedding head, which
zero-shot classification, retrieval and prompt learners share. ``zeroshot_head`` trains a copy
of it (``VLSegModel.add_zeroshot_head``, saved in the checkpoint's ``zeroshot.safetensors``,
``zeroshot_head: true`` in the model config) that only zero-shot classification uses, with a
temperature of its own: every other weight, the tower's head and the CLIP temperature
included, stays bit-identical, so retrieval keeps the caption-specific detail that paraphrases
blur and only zero-shot gains their wording robustness. ``best/`` is then chosen by the
zero-shot probes alone (retrieval recall is still logged).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .atomic import atomic_write, write_json
from .checkpoint import load_checkpoint, resolve, save_checkpoint
from .config import load_yaml, save_yaml, to_dict
from .data.io import load_image
from .data.manifest import captioned_images, read_manifest
from .losses import clip_loss
from .metrics import balanced_accuracy, binary_auroc, top1_accuracy
from .ood import OOD_FILE
from .paraphrase import Paraphraser, caption_pool_with_claims, fact_claims, image_facts
from .registry import model_config
from .training import Checkpointer, MetricsLog, optimizer_step, warmup_cosine

HEAD = "vision.visual.head."
ZEROSHOT_HEAD = "zeroshot_head."
TARGETS = ("head", "zeroshot_head")


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
    extra_data: list[str] = field(default_factory=list)  # more datasets (their split/val_split)
    paraphrases: int = 0  # captions per image from vlseg.paraphrase; 0 = manifest captions only
    paraphrase_seed: int = 0
    paraphrase_average: int = 1  # mean of this many paraphrase embeddings per image and step
    original_frac: float = 0.25  # probability of drawing the manifest caption itself
    hard_negatives: int = 0  # contradicting captions per image (one drawn per step); 0 = none
    # positives of a drawn paraphrase: every image of the batch it is true of (its claims are
    # among the image's facts, vlseg.paraphrase.fact_claims); false = only images with identical
    # facts or the same drawn text (then e.g. "CT image" drawn for one image is a negative of
    # every other CT image in the batch)
    fact_positives: bool = True
    caption_cache: str | None = None  # .safetensors reused across runs for paraphrase embeddings
    # head: the tower's embedding head (zero-shot, retrieval and prompt learners share it);
    # zeroshot_head: a separate head that only zero-shot classification uses (the rest kept)
    target: str = "head"


def _build(cfg: AlignConfig):
    """(model, model config, checkpoint metadata): ``model``'s architecture with ``init``'s
    weights outside the head."""
    zeroshot = cfg.target == "zeroshot_head"
    if cfg.init is None:
        if cfg.model is None:
            raise ValueError("set init (a checkpoint dir) or model (a registered name)")
        model, mcfg, meta = resolve(cfg.model, allow_untrained=True)
        if zeroshot and model.zeroshot_head is None:
            model.add_zeroshot_head()
            mcfg.zeroshot_head = True
        return model, mcfg, meta
    if zeroshot:  # every weight from init; the zero-shot head starts as a copy of the tower's
        return load_checkpoint(
            cfg.init, overrides={"zeroshot_head": True}, rebuild=(ZEROSHOT_HEAD,)
        )
    overrides = None if cfg.model is None else to_dict(model_config(cfg.model))
    return load_checkpoint(cfg.init, overrides=overrides, rebuild=(HEAD,))


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
def _caption_embeddings(model, captions: list[str], device, progress: bool = False):
    """L2-normalised text embeddings, in batches of similar length (padding costs time)."""
    if not captions:
        return torch.zeros(0, 0)
    order = sorted(range(len(captions)), key=lambda i: len(captions[i]))
    embs = []
    starts = range(0, len(captions), 256)
    for s in tqdm(starts, desc="captions", unit="batch", disable=not progress):
        tok = model.text.tokenize([captions[i] for i in order[s : s + 256]])
        e = model.encode_text(tok["ids"].to(device), tok["mask"].to(device)).embedding
        embs.append(F.normalize(e.float(), dim=-1).cpu())
    out = torch.empty(len(captions), embs[0].shape[1])
    out[torch.tensor(order)] = torch.cat(embs)
    return out


def _text_fingerprint(model) -> str:
    """A hash of the text tower's weights: cached caption embeddings are valid for it alone."""
    h = hashlib.sha256()
    for name, t in sorted(model.text.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _cached_caption_embeddings(model, texts: list[str], device, cache: str | None):
    """`_caption_embeddings` through an on-disk cache (``cache``: a ``.safetensors`` file of
    embeddings with the texts and the text tower's fingerprint in its metadata): the text tower
    is frozen, so a rerun embeds only texts it has not seen."""
    if not cache:
        return _caption_embeddings(model, texts, device, progress=True)
    path, known = Path(cache), {}
    fingerprint = _text_fingerprint(model)
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") == fingerprint:
                old = f.get_tensor("embeddings")
                known = {t: old[i] for i, t in enumerate(json.loads(meta["texts"]))}
    missing = [t for t in dict.fromkeys(texts) if t not in known]
    if missing:
        new = _caption_embeddings(model, missing, device, progress=True)
        known.update(zip(missing, new, strict=True))
        names = list(known)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            save_file(
                {"embeddings": torch.stack([known[t] for t in names]).contiguous()},
                str(tmp),
                metadata={"fingerprint": fingerprint, "texts": json.dumps(names)},
            )
    return torch.stack([known[t] for t in texts]) if texts else torch.zeros(0)


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
    if cfg.paraphrases < 0 or cfg.hard_negatives < 0 or cfg.paraphrase_average < 1:
        raise ValueError("paraphrases and hard_negatives must be >= 0, paraphrase_average >= 1")
    if not 0.0 <= cfg.original_frac <= 1.0:
        raise ValueError(f"original_frac={cfg.original_frac} must be in [0, 1]")
    if cfg.hard_negatives and not cfg.paraphrases:
        raise ValueError("hard_negatives needs paraphrases (the generator writes them)")
    if cfg.target not in TARGETS:
        raise ValueError(f"target={cfg.target!r}; choose one of {TARGETS}")
    if cfg.target == "zeroshot_head" and cfg.model is not None and cfg.init is not None:
        raise ValueError("target=zeroshot_head keeps init's architecture: leave model unset")
    model, mcfg, init_meta = _build(cfg)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head = _vision_head(model)
    if cfg.target == "zeroshot_head":
        model.zeroshot_head.load_state_dict(head.state_dict())
        head = model.zeroshot_head  # trains on the tower head's inputs (the same features)
        # its own temperature: the model's (the contrastive term of later training) is kept
        scale = torch.nn.Parameter(model.logit_scale.detach().clone())
    else:
        scale = model.logit_scale
    params = [*head.parameters(), scale]
    for p in params:
        p.requires_grad_(True)

    datasets = [cfg.data, *cfg.extra_data]
    splits = {}
    for name in (cfg.split, cfg.val_split):
        pairs = [r for d in datasets for r in captioned_images(d, name)]
        images, captions = [r.image for r in pairs], [r.caption for r in pairs]
        distinct = sorted(set(captions))
        splits[name] = {
            "feats": _head_inputs(model, images, mcfg.image_size, cfg, device),
            "caption_emb": _caption_embeddings(model, distinct, device),
            "cap": torch.tensor([distinct.index(c) for c in captions]),
            "images": images,
        }
    tr, va = splits[cfg.split], splits[cfg.val_split]
    if cfg.paraphrases:
        tr.update(_paraphrase_table(model, datasets, cfg.split, tr["images"], cfg, device))
        va["zero_shot"] = _zero_shot_probes(model, datasets, cfg.val_split, va["images"], device)
    # Segmentation, calibration and the out-of-domain fit do not use the head: keep them.
    meta = {k: init_meta[k] for k in ("vocabulary", "serving") if init_meta.get(k) is not None}
    record = "align"
    if cfg.target == "zeroshot_head":  # init's model unchanged: keep its whole record too
        own = ("model", "external", "checkpoint_dir", "random_init", "zeroshot_align")
        meta = {k: v for k, v in init_meta.items() if k not in own}
        record = "zeroshot_align"
    ood = None if cfg.init is None else Path(cfg.init) / OOD_FILE

    def save(path: Path, extra: dict) -> None:
        extra = {record if k == "align" else k: v for k, v in extra.items()}
        save_checkpoint(model, mcfg, path, extra={**extra, **meta})
        if ood is not None and ood.is_file():
            shutil.copyfile(ood, path / OOD_FILE)

    best_row = _train_head(scale, head, params, tr, va, cfg, device, save=save)
    write_json(out / "best_metrics.json", best_row)
    return out


def _sample(feats: dict, cap: torch.Tensor, batch_size: int, gen: torch.Generator):
    """A random batch of cached head inputs (each mirrored with probability 1/2 when the
    mirror images were cached) and their caption indices."""
    idx = torch.randint(len(cap), (batch_size,), generator=gen)
    return _features(feats, idx, gen), cap[idx]


def _features(feats: dict, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    x = feats["plain"][idx]
    if "flip" in feats:
        use = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(use.view(-1, *[1] * (x.dim() - 1)), feats["flip"][idx], x)
    return x


# ----------------------------------------------------------------------------------------------
# Paraphrases


def _facts_for(datasets: list[str], split: str, images: list[Path]) -> list:
    facts: dict = {}
    for d in datasets:
        facts.update(image_facts(read_manifest(d, split)))
    return [facts[p] for p in images]


def _paraphrase_table(model, datasets, split, images, cfg: AlignConfig, device) -> dict:
    """Caption pools of the training images as indices into one table of embedded texts.

    Returns ``text_emb`` (T x E), ``pool`` (N x P text ids, -1 padded; column 0 the manifest
    caption), ``pool_n`` (N), ``signature`` (N: images with equal facts share an id), with
    hard negatives ``neg`` / ``neg_n`` likewise, and with ``fact_positives`` ``truth`` (N x C
    bool: which claims hold for each image) and ``text_claims`` (T x K claim ids, -1 padded).
    """
    para = Paraphraser(cfg.paraphrase_seed)
    facts = _facts_for(datasets, split, images)
    texts: dict[str, int] = {}
    said: dict[int, frozenset] = {}  # text id -> its claims

    def ids(caps: list[str]) -> list[int]:
        return [texts.setdefault(c, len(texts)) for c in caps]

    pools, negs, sigs = [], [], {}
    for img, f in zip(images, facts, strict=True):
        key = img.name
        pool = caption_pool_with_claims(f, para, cfg.paraphrases, key=key)
        pools.append(ids([c for c, _ in pool]))
        for t, (_, claims) in zip(pools[-1], pool, strict=True):
            old = said.get(t)  # a paraphrase's claims beat a manifest caption's ("caption", c)
            if old is None or any(c[0] == "caption" for c in old):
                said[t] = claims
        if cfg.hard_negatives:
            rng = np.random.default_rng([cfg.paraphrase_seed, 1, *map(ord, key[-16:])])
            drawn = (para.contrast(f, rng) for _ in range(3 * cfg.hard_negatives))
            # the first H distinct ones in draw order: a random pick, reproducible (a sorted set
            # would favour captions early in the alphabet, e.g. under-sample organ negatives)
            negs.append(ids(list(dict.fromkeys(c for c in drawn if c))[: cfg.hard_negatives]))
        sigs.setdefault(f.signature, len(sigs))
    table = list(texts)
    out = {
        "text_emb": _cached_caption_embeddings(model, table, device, cfg.caption_cache),
        "signature": torch.tensor([sigs[f.signature] for f in facts]),
        "n_texts": len(table),
    }
    out["pool"], out["pool_n"] = _pad(pools)
    if cfg.hard_negatives:
        out["neg"], out["neg_n"] = _pad(negs)
    if cfg.fact_positives:
        truths = [fact_claims(f) for f in facts]
        vocab: dict = {}
        for claims in [*truths, *said.values()]:
            for c in sorted(claims, key=repr):
                vocab.setdefault(c, len(vocab))
        truth = torch.zeros(len(truths), len(vocab), dtype=torch.bool)
        for i, claims in enumerate(truths):
            truth[i, [vocab[c] for c in claims]] = True
        # a text without claims (none is generated) would be true of everything: give it none
        rows = [[vocab[c] for c in said.get(t, ())] or [-2] for t in range(len(table))]
        out["truth"] = truth
        out["text_claims"], _ = _pad(rows)
    return out


def _fact_positives(tr: dict, idx: torch.Tensor, text_id: torch.Tensor) -> torch.Tensor:
    """B x B bool: drawn text j states only claims that hold for image i (texts averaged over
    several paraphrases, text id -1, match nothing here)."""
    claims = tr["text_claims"][text_id.clamp(min=0)]  # B x K, -1 padded, -2 = never true
    truth = tr["truth"][idx]  # B x C
    ok = truth[:, claims.clamp(min=0)] | (claims == -1)[None]  # B x B x K
    ok &= (claims != -2)[None]
    return ok.all(-1) & (text_id >= 0)[None, :]


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in rows))
    table = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        table[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return table, torch.tensor([len(r) for r in rows])


def _draw_texts(tr: dict, idx: torch.Tensor, cfg: AlignConfig, gen: torch.Generator):
    """(text embeddings B x E, text ids B (-1 for an average), hard negatives B x E or None)."""
    pool, n = tr["pool"][idx], tr["pool_n"][idx]
    b = len(idx)

    def draw(table: torch.Tensor, count: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
        span = (count - lo).clamp(min=1)
        col = lo + (torch.rand(b, generator=gen) * span).long().clamp(max=span - 1)
        return table[torch.arange(b), col]

    first = (n > 1).long()  # column 0 is the manifest caption; draw among the others
    if cfg.paraphrase_average > 1:
        cols = torch.stack([draw(pool, n, first) for _ in range(cfg.paraphrase_average)], 1)
        txt = F.normalize(tr["text_emb"][cols].mean(1), dim=-1)
        text_id = torch.full((b,), -1, dtype=torch.long)
    else:
        text_id = draw(pool, n, first)
        txt = tr["text_emb"][text_id]
    original = torch.rand(b, generator=gen) < cfg.original_frac
    txt = torch.where(original[:, None], tr["text_emb"][pool[:, 0]], txt)
    text_id = torch.where(original, pool[:, 0], text_id)
    neg = None
    if "neg" in tr:
        nid = draw(tr["neg"][idx], tr["neg_n"][idx], torch.zeros(b, dtype=torch.long))
        has = nid >= 0
        neg = torch.where(has[:, None], tr["text_emb"][nid.clamp(min=0)], torch.nan)
    return txt, text_id, neg


def multi_positive_clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor,
    hard_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE where ``positives`` (B x B bool, true on the diagonal) marks every
    (image, text) pair that matches; ``hard_negatives`` (B x E, NaN rows for none) adds one more
    text to each image's row, a negative for that image only."""
    img = F.normalize(image_emb, dim=-1)
    txt = F.normalize(text_emb, dim=-1)
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * img @ txt.t()
    target = positives.float()
    t2i = torch.sum(-(target / target.sum(0, keepdim=True)) * F.log_softmax(logits, 0), 0).mean()
    row = logits
    if hard_negatives is not None:
        has = ~torch.isnan(hard_negatives).any(1)
        neg = F.normalize(torch.nan_to_num(hard_negatives), dim=-1)
        extra = torch.where(
            has, scale * (img * neg).sum(1), torch.full_like(has, -1e4, dtype=img.dtype)
        )
        row = torch.cat([logits, extra[:, None]], 1)
        target = torch.cat([target, torch.zeros_like(target[:, :1])], 1)
    i2t = torch.sum(-(target / target.sum(1, keepdim=True)) * F.log_softmax(row, 1), 1).mean()
    return 0.5 * (i2t + t2i)


def _zero_shot_probes(model, datasets, split, images, device) -> list[dict]:
    """Validation zero-shot tasks worded with the paraphrase generator's class phrases (not any
    benchmark's): per task the image rows, their classes and one class-embedding set per
    wording."""
    from . import paraphrase as P

    facts = _facts_for(datasets, split, images)
    tasks = []

    def add(name, metric, rows, y, wordings):
        if rows and len(set(y)) > 1:
            embs = [_caption_embeddings(model, list(w), device) for w in wordings]
            tasks.append(
                {
                    "name": name,
                    "metric": metric,
                    "rows": torch.tensor(rows),
                    "y": np.array(y),
                    "classes": embs,
                }
            )

    mods = [(i, f.modality) for i, f in enumerate(facts) if f.modality in ("ct", "dermoscopy")]
    k = min(len(P.CT_MODALITY), len(P.DERM_MODALITY))
    add(
        "modality",
        "accuracy",
        [i for i, _ in mods],
        [int(m == "dermoscopy") for _, m in mods],
        [(P.CT_MODALITY[j], P.DERM_MODALITY[j]) for j in range(k)],
    )
    derm = [(i, f.label) for i, f in enumerate(facts) if f.label in P.DERM_CLASSES]
    add(
        "dermoscopy",
        "balanced_accuracy",
        [i for i, _ in derm],
        [P.DERM_CLASSES.index(c) for _, c in derm],
        [
            tuple(P.DERM_NAMES[c][j % len(P.DERM_NAMES[c])] for c in P.DERM_CLASSES)
            for j in range(6)
        ],
    )
    ct = [
        (i, f.label)
        for i, f in enumerate(facts)
        if f.label in P.CT_LABELS and "liver" not in f.absent
    ]
    add(
        "ct_lesion",
        "auroc",
        [i for i, _ in ct],
        [int(c == "normal liver") for _, c in ct],
        [(P.LESION_NOUNS[j][0], P.NORMAL_LIVER[j]) for j in range(8)],
    )
    sp = [
        (i, "spleen" in f.absent)
        for i, f in enumerate(facts)
        if "spleen" in f.present or "spleen" in f.absent
    ]
    add(
        "spleen",
        "auroc",
        [i for i, _ in sp],
        [int(a) for _, a in sp],
        [
            (P.ORGAN_IN[j].format(o="the spleen"), P.ORGAN_OUT[j].format(o="the spleen"))
            for j in range(len(P.ORGAN_IN))
        ],
    )
    return tasks


@torch.no_grad()
def _head_zero_shot(head: torch.nn.Module, va: dict, device) -> dict[str, float]:
    """Mean zero-shot score over the wordings of each `_zero_shot_probes` task (class 0 is the
    positive one for AUROC), and their mean ``zero_shot_mean``."""
    from .inference import ovr_log_odds

    head.eval()
    feats = va["feats"]["plain"]
    emb = torch.cat(
        [head(feats[s : s + 256].float().to(device)).cpu() for s in range(0, len(feats), 256)]
    )
    head.train()
    emb = F.normalize(emb.float(), dim=-1)
    out = {}
    for task in va["zero_shot"]:
        x = emb[task["rows"]]
        scores = []
        for classes in task["classes"]:
            logits = (100.0 * x @ classes.t()).double().numpy()
            if task["metric"] == "accuracy":
                scores.append(top1_accuracy(logits, task["y"]))
            elif task["metric"] == "balanced_accuracy":
                scores.append(balanced_accuracy(logits, task["y"]))
            else:
                scores.append(binary_auroc(ovr_log_odds(logits)[:, 0], task["y"] == 0))
        out[f"zero_shot_{task['name']}"] = float(np.mean(scores))
    out["zero_shot_mean"] = float(np.mean(list(out.values()))) if out else 0.0
    return out


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


def _train_head(scale, head, params, tr: dict, va: dict, cfg: AlignConfig, device, *, save):
    """Train ``params`` (the head and ``scale``, the CLIP temperature it trains with) with the
    CLIP loss on the cached features ``tr``; every ``eval_every`` steps log the validation
    recall to ``out/metrics.jsonl`` and write ``out/best`` (through ``save``) when the
    selection score is the best so far. Returns the best evaluation's metrics row."""
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
        if "text_emb" in tr:  # paraphrases
            idx = torch.randint(len(tr["cap"]), (cfg.batch_size,), generator=gen)
            x = _features(tr["feats"], idx, gen)
            txt, text_id, neg = _draw_texts(tr, idx, cfg, gen)
            emb = head(x.float().to(device))
            same = (tr["signature"][idx][:, None] == tr["signature"][idx][None, :]) | (
                (text_id[:, None] == text_id[None, :]) & (text_id[:, None] >= 0)
            )
            if "truth" in tr:
                same |= _fact_positives(tr, idx, text_id)
            loss = multi_positive_clip_loss(
                emb,
                txt.to(device),
                scale,
                same.to(device),
                None if neg is None else neg.to(device),
            )
        else:
            x, cap = _sample(tr["feats"], tr["cap"], cfg.batch_size, gen)
            emb = head(x.float().to(device))  # (B, E)
            txt = tr["caption_emb"][cap].to(device)  # (B, E)
            loss = clip_loss(emb, txt, scale, groups=cap.to(device))
        loss.backward()
        optimizer_step(optimizer, warmup_cosine(step, warmup=warmup, total=cfg.steps))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            row = {"step": step + 1, "loss": loss.item(), "time_s": time.time() - t0}
            row.update(_head_recall(head, va, device))
            score = np.mean([row[f"t2i_R@{k}"] + row[f"i2t_R@{k}"] for k in (1, 5, 10)])
            if "zero_shot" in va:  # recall (each term in [0, 2]) and zero-shot, equal weights
                row.update(_head_zero_shot(head, va, device))
                score = (
                    row["zero_shot_mean"]
                    if cfg.target == "zeroshot_head"
                    else 0.5 * score + row["zero_shot_mean"]
                )
            log.append(row)
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
