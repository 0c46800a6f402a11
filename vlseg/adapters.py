"""Prompt-tuning adapters: attach a learner to a frozen base model, save and load its tensors.

An adapter is a directory::

    adapter.safetensors   only the tuned tensors: the learner's (``prompter.*`` or the
                          ``lora_`` tensors inside the towers), plus the decoder's when it trained
    adapter.yaml          method, learner settings, parameter counts, and the base model: its
                          name/path and a sha256 over its state-dict tensors (sorted keys)

Loading checks the base hash first, so an adapter never silently lands on other weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import load_yaml, save_yaml
from .data.io import atomic_directory

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.yaml"
FORMAT = "vlseg-adapter"
METHODS = ("coop", "cocoop", "vpt", "maple", "lora")
LORA_TOWERS = ("text", "vision")
_BASE_PREFIXES = ("vision.visual.", "text.", "logit_scale")  # towers; the rest is the decoder


# ---------------------------------------------------------------------------- base identity
def _is_adapter_key(key: str) -> bool:
    return key.startswith("prompter.") or "lora_" in key


def state_dict_sha256(model: nn.Module, *, adapters: bool = False) -> str:
    """sha256 over the base model's state-dict tensors (key, dtype, shape, bytes; sorted keys).

    Adapter tensors are skipped and LoRA-wrapped keys are mapped back, so an adapted model hashes
    like its base; any change to a base tensor changes the hash. ``adapters=True`` hashes every
    tensor, adapter ones included (what the model computes, e.g. for a retrieval index). The
    zero-shot head (``zeroshot_head.``) is never hashed: it feeds zero-shot classification
    only, so adding or retraining it neither invalidates adapters tuned on the base nor
    retrieval indexes built with it.
    """
    h = hashlib.sha256()
    state = {
        k.replace(".base_layer.", "."): v
        for k, v in model.state_dict().items()
        if (adapters or not _is_adapter_key(k)) and not k.startswith("zeroshot_head.")
    }
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# ---------------------------------------------------------------------------- building
def _depth(spec: dict, layers: int) -> int:
    if not spec.get("deep"):
        return 1
    depth = spec.get("depth") or layers
    if not 1 <= depth <= layers:
        raise ValueError(f"depth={depth} but the tower has {layers} layers; use 1..{layers}")
    return int(depth)


def _ctx_init(text: nn.Module, phrase: str | None, n_ctx: int) -> torch.Tensor | None:
    """n_ctx x D token embeddings of ``phrase`` (without start/end tokens), or None."""
    if not phrase:
        return None
    tok = text.tokenize([phrase])
    n_real = int(tok["mask"][0].sum()) - 2  # minus start and end tokens
    if n_real != n_ctx:
        raise ValueError(
            f"ctx_init {phrase!r} is {n_real} tokens for this tokenizer; set n_ctx={n_real} "
            f"(now {n_ctx}) or change the phrase"
        )
    with torch.no_grad():
        ids = tok["ids"].to(next(text.parameters()).device)
        return text.embed_tokens(ids)[0, 1 : 1 + n_ctx].float().cpu()


def _vision_mode(spec: dict, vision: nn.Module) -> str:
    """The visual prompt form: auto = tokens on ViTs; on CNN towers, MaPLe's stage-output shift
    ("features") and VPT's padding prompt ("pixels")."""
    mode = spec.get("vpt_mode", "auto")
    kinds = vision.prompt_kinds
    if mode == "auto":
        if "tokens" in kinds:
            return "tokens"
        return "features" if spec["method"] == "maple" and "features" in kinds else "pixels"
    if spec["method"] == "vpt" and mode == "features":
        raise ValueError("vpt_mode='features' is a MaPLe form; VPT takes tokens or pixels")
    if mode not in kinds:
        raise ValueError(
            f"vpt_mode={mode!r} is not available for a {vision.tower_kind} vision tower; "
            f"available: {', '.join(vision.prompt_kinds)} (or auto)"
        )
    return mode


def build_learner(model: nn.Module, spec: dict) -> nn.Module:
    """The prompt learner (``prompts``) for a tuning spec, sized for ``model``'s towers."""
    from prompts.cocoop import CoCoOp
    from prompts.coop import CoOp
    from prompts.maple import MaPLe
    from prompts.vpt import VPT

    method, text, vision = spec["method"], model.text, model.vision
    n_ctx = int(spec.get("n_ctx", 4))
    init = _ctx_init(text, spec.get("ctx_init"), n_ctx) if method != "vpt" else None
    if method == "coop":
        return CoOp(width=text.width, n_ctx=n_ctx, init=init, depth=_depth(spec, len(text.layers)))
    if method == "cocoop":
        depth = _depth(spec, len(text.layers))
        return CoCoOp(
            width=text.width, embed_dim=vision.embed_dim, n_ctx=n_ctx, init=init, depth=depth
        )
    mode = _vision_mode(spec, vision)
    pixels = {"image_size": vision.image_size, "pad": int(spec.get("pad_width", 4))}
    if method == "vpt" and mode == "tokens":
        depth = _depth(spec, len(vision.layers))
        n = int(spec.get("vpt_tokens", 8))
        return VPT(mode="tokens", width=vision.token_width, n_tokens=n, depth=depth)
    if method == "vpt":
        return VPT(mode="pixels", **pixels)
    if method == "maple" and mode == "tokens":
        depth = _depth(spec, min(len(text.layers), len(vision.layers)))
        return MaPLe(
            text_width=text.width,
            n_ctx=n_ctx,
            init=init,
            depth=depth,
            mode="tokens",
            vision_width=vision.token_width,
        )
    if method == "maple" and mode == "features":
        level = int(spec.get("maple_level", 2))
        chans = vision.stage_channels
        if level not in range(len(chans)):
            raise ValueError(f"maple_level={level}; use 0..3 (the CNN stage at stride 4..32)")
        return MaPLe(
            text_width=text.width,
            n_ctx=n_ctx,
            init=init,
            depth=_depth(spec, len(text.layers)),
            mode="features",
            channels=chans[level],
            level=level,
            rank=int(spec.get("maple_rank", 16)),
        )
    if method == "maple":
        depth = _depth(spec, len(text.layers))
        grid = int(spec.get("maple_grid", 4))
        return MaPLe(
            text_width=text.width,
            n_ctx=n_ctx,
            init=init,
            depth=depth,
            mode="pixels",
            grid=grid,
            **pixels,
        )
    raise ValueError(f"unknown tuning method {method!r}; available: {', '.join(METHODS)}")


def _attach_lora(model: nn.Module, spec: dict) -> None:
    from prompts.lora import inject_lora, lora_candidates

    towers = list(spec.get("lora_towers") or LORA_TOWERS)
    bad = sorted(set(towers) - set(LORA_TOWERS))
    if bad:
        raise ValueError(f"lora_towers {bad} unknown; choose from {', '.join(LORA_TOWERS)}")
    modules = {"text": model.text, "vision": model.vision.visual}
    targets = list(spec.get("lora_targets") or [])
    wrapped = []
    for tower in towers:
        wrapped += inject_lora(
            modules[tower],
            rank=int(spec.get("lora_rank", 4)),
            alpha=spec.get("lora_alpha"),
            targets=targets,
            required=False,
        )
    if not wrapped:
        available = {t: sorted(lora_candidates(modules[t])) for t in towers}
        raise ValueError(f"none of lora_targets {targets} is a layer here; available: {available}")


def decoder_parameter_names(model: nn.Module) -> list[str]:
    """Everything that is not a tower or a learner: pyramid neck, fusion, decoder, heads."""
    return [
        n
        for n, _ in model.named_parameters()
        if not n.startswith(_BASE_PREFIXES) and not _is_adapter_key(n)
    ]


def attach(model: nn.Module, spec: dict) -> list[str]:
    """Freeze ``model`` and add the learner described by ``spec`` (a dict with "method" and the
    learner settings of ``TuneConfig``).

    Returns:
        The names of the parameters that now train: the learner's, plus the decoder's when
        ``spec["train_decoder"]``. They are exactly the tensors an adapter stores.

    Raises:
        RuntimeError: the model already carries an adapter (load a fresh base).
    """
    if getattr(model, "prompter", None) is not None or any(
        "lora_" in k for k in model.state_dict()
    ):
        raise RuntimeError(
            "this model already has a prompt learner or LoRA layers; attach adapters to a fresh "
            "base model (vlseg.load(base) or load_checkpoint) without them"
        )
    if spec.get("method") not in METHODS:
        raise ValueError(f"unknown tuning method {spec.get('method')!r}; available: {METHODS}")
    # frozen towers also keep BatchNorm statistics and dropout fixed in train mode
    model.vision.set_trainable("frozen")
    model.text.set_trainable("frozen")
    if spec["method"] == "lora":
        _attach_lora(model, spec)
    else:
        model.attach_prompter(build_learner(model, spec).to(next(model.parameters()).device))
    names = [n for n, _ in model.named_parameters() if _is_adapter_key(n)]
    if spec.get("train_decoder"):
        names += decoder_parameter_names(model)
    chosen = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    return names


def parameter_stats(model: nn.Module, names: list[str]) -> dict[str, Any]:
    """Trainable vs base parameter counts (and the fraction of the base that trains)."""
    params = dict(model.named_parameters())
    trainable = sum(params[n].numel() for n in names)
    learner = sum(params[n].numel() for n in names if _is_adapter_key(n))
    base = sum(p.numel() for n, p in params.items() if not _is_adapter_key(n))
    return {
        "trainable": trainable,
        "learner": learner,
        "decoder": trainable - learner,
        "base": base,
        "fraction": trainable / max(1, base),
    }


# ---------------------------------------------------------------------------- files
def save_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    spec: dict,
    base: dict,
    names: list[str],
    extra: dict | None = None,
) -> Path:
    """Write an adapter directory atomically (temp dir, then rename over ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    state = {k: sd[k].detach().cpu().contiguous() for k in names}
    learner = getattr(model, "prompter", None)
    meta = {
        "format": FORMAT,
        "version": 1,
        "method": spec["method"],
        "learner": dict(spec),
        "learner_shapes": learner.hparams() if learner is not None else {},
        "base": dict(base),
        "params": parameter_stats(model, names),
        **(extra or {}),
    }
    with atomic_directory(path) as tmp:
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": FORMAT})
        save_yaml(meta, tmp / ADAPTER_CONFIG)
    return path


def read_adapter_config(path: str | os.PathLike) -> dict:
    """The ``adapter.yaml`` of an adapter directory (checked to be one)."""
    path = Path(path)
    if not (path / ADAPTER_WEIGHTS).is_file() or not (path / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(
            f"{path} is not a vlseg adapter (expected {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG}; "
            "`vlseg tune` writes them under its out/best and out/last)"
        )
    meta = load_yaml(path / ADAPTER_CONFIG)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path / ADAPTER_CONFIG}: format {meta.get('format')!r}, not {FORMAT}")
    return meta


def recorded_spec(meta: dict, spec: dict | None = None) -> dict:
    """The learner spec of an ``adapter.yaml`` (or ``spec``, e.g. a resumed run's config) with
    ``vpt_mode: auto`` replaced by the visual-prompt form the adapter was actually made with, so
    it rebuilds the same learner whatever "auto" picks in this version."""
    spec = dict(meta["learner"] if spec is None else spec)
    resolved = (meta.get("learner_shapes") or {}).get("mode")
    if spec.get("vpt_mode", "auto") == "auto" and resolved:
        spec["vpt_mode"] = resolved
    return spec


def load_adapter_weights(model: nn.Module, path: str | os.PathLike, names: list[str]) -> None:
    """Copy an adapter's tensors into a model that already has the matching learner."""
    state = load_file(str(Path(path) / ADAPTER_WEIGHTS))
    missing, unexpected = sorted(set(names) - set(state)), sorted(set(state) - set(names))
    if missing or unexpected:
        raise ValueError(
            f"{path}: adapter tensors do not match its learner: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)


def load_adapter(model: nn.Module, path: str | os.PathLike) -> dict:
    """Check the base hash, attach the adapter's learner to ``model`` and load its tensors.

    Returns:
        The adapter's ``adapter.yaml`` contents.

    Raises:
        ValueError: ``model`` is not the base the adapter was tuned on (both hashes named).
    """
    meta = read_adapter_config(path)
    base = meta["base"]
    got = state_dict_sha256(model)
    if got != base["sha256"]:
        raise ValueError(
            f"adapter {path} was tuned on base model {base['model']!r} ({base.get('name')}) "
            f"with weights sha256 {base['sha256']}, but the model given has sha256 {got}. "
            f"Load it on its base: vlseg.load({base['model']!r}, adapter={str(path)!r})"
        )
    names = attach(model, recorded_spec(meta))
    load_adapter_weights(model, path, names)
    model.eval()
    return meta
