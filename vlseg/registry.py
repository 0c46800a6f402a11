"""Named model variants (``configs/models/*.yaml``) and the model builder."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from torch import nn

from .config import ModelConfig, from_dict, load_yaml
from .modeling.towers import build_towers
from .modeling.vlseg import VLSegModel


def _packaged_config_dirs() -> list[Path]:
    """``configs/models``: package data ``vlseg._configs`` (the top-level ``configs/`` directory,
    mapped in setup.py) in a wheel or an editable install, else the source checkout's copy."""
    found = []
    try:
        root = resources.files("vlseg._configs") / "models"
        if isinstance(root, Path):  # an installed wheel or an editable install: real files
            found.append(root.resolve())
    except ModuleNotFoundError:  # run from a checkout that was never installed
        pass
    return found or [Path(__file__).resolve().parents[1] / "configs" / "models"]


CONFIG_DIRS = _packaged_config_dirs()
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "phantom-tiny"
TRAINABLE_MODES = ("frozen", "full", "lora")


def _config_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("VLSEG_CONFIG_PATH", "").split(os.pathsep) if p]
    return extra + CONFIG_DIRS


def list_models() -> list[str]:
    """Names of the registered variants."""
    names = set()
    for d in _config_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def model_config(name_or_path: str | os.PathLike) -> ModelConfig:
    """Resolve a variant name or a YAML path to a ``ModelConfig``."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return from_dict(ModelConfig, load_yaml(path), where=str(path))
    for d in _config_dirs():
        cand = d / f"{name_or_path}.yaml"
        if cand.is_file():
            return from_dict(ModelConfig, load_yaml(cand), where=str(cand))
    raise ValueError(
        f"unknown model {str(name_or_path)!r}; available: {', '.join(list_models())}"
        " (or a path to a model YAML or a checkpoint directory)"
    )


def _set_trainable(
    encoder: nn.Module, inner: nn.Module, mode: str, *, rank: int, targets: list[str]
) -> None:
    """Full training, a frozen tower, or a frozen tower with LoRA adapters (peft) in ``inner``."""
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"trainable mode {mode!r}; valid: {', '.join(TRAINABLE_MODES)}")
    encoder.set_trainable("full" if mode == "full" else "frozen")
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        present = {
            name.rsplit(".", 1)[-1] for name, m in inner.named_modules() if isinstance(m, nn.Linear)
        }
        chosen = [t for t in targets if t in present]
        if not chosen:
            raise ValueError(
                f"none of lora_targets {targets} names a Linear layer here; "
                f"available: {sorted(present)}"
            )
        inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=chosen), inner
        )


def build_model(cfg: ModelConfig) -> VLSegModel:
    """Build a model (random decoder; towers random or from ``cfg.pretrained``)."""
    vision, text, logit_scale = build_towers(
        cfg.clip, pretrained=cfg.pretrained, image_size=cfg.image_size, pyramid_dim=cfg.pyramid_dim
    )
    # The pyramid neck of the vision encoder always trains: it is a new layer.
    _set_trainable(
        vision, vision.visual, cfg.vision_trainable, rank=cfg.lora_rank, targets=cfg.lora_targets
    )
    _set_trainable(text, text, cfg.text_trainable, rank=cfg.lora_rank, targets=cfg.lora_targets)
    if cfg.text_trainable != "full" and text.tower_kind == "hf":
        # The projection into the joint space is small and must move for image-text alignment.
        for p in text.text.proj.parameters():
            p.requires_grad_(True)
    if cfg.mean is not None:
        vision.mean = tuple(cfg.mean)
    if cfg.std is not None:
        vision.std = tuple(cfg.std)
    model = VLSegModel(
        vision=vision,
        text=text,
        logit_scale=logit_scale,
        dim=cfg.decoder_dim,
        kernel_sizes=list(cfg.kernel_sizes),
        num_heads=cfg.num_heads,
        sentence_token=cfg.sentence_token,
    )
    if cfg.zeroshot_head:
        model.add_zeroshot_head()
    return model
