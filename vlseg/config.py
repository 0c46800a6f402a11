"""Configuration dataclasses, YAML loading and ``key=value`` overrides.

Unknown keys are errors that list the valid ones, so a typo in a config never passes silently.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vlseg.atomic import write_yaml

T = TypeVar("T")


@dataclass
class ModelConfig:
    """A model variant: CLIP towers plus the scale-aware decoder."""

    name: str = "custom"  # variant name, recorded in checkpoints
    clip: dict = field(
        default_factory=dict
    )  # towers: {"name": open_clip name} or {"config": {...}}
    pretrained: str | None = None  # open_clip pretrained tag or local weights file for the towers
    image_size: int = 224  # square input side in pixels
    pyramid_dim: int = 128  # channels of each multi-scale vision map (ViT feature pyramid)
    decoder_dim: int = 128  # width of the fusion blocks and the decoder
    kernel_sizes: list[int] = field(default_factory=lambda: [3, 5, 7])  # multi-kernel context
    num_heads: int = 4  # heads of pixel-to-word cross-attention
    vision_trainable: str = "full"  # frozen | full | lora
    text_trainable: str = "full"  # frozen | full | lora
    lora_rank: int = 8  # rank when an encoder is "lora"
    lora_targets: list[str] = field(
        default_factory=lambda: ["c_fc", "c_proj", "qkv", "query", "key", "value"]
    )
    sentence_token: bool = False  # the sentence embedding is also a cross-attention key/value
    # a second image-embedding head used only by zero-shot classification (``vlseg align
    # target=zeroshot_head``); retrieval and every other use keep the tower's own head
    zeroshot_head: bool = False
    mean: list[float] | None = None  # preprocessing mean; None = the towers' own
    std: list[float] | None = None  # preprocessing std; None = the towers' own


@dataclass
class LoopConfig:
    """What every training run sets: model, data, run directory and the optimisation loop
    (``vlseg.engine.fit``). ``TrainConfig`` (``vlseg train``) and ``TuneConfig``
    (``vlseg tune``) extend it, so a loop setting is declared here once."""

    # train: registered variant name or model YAML; tune: also a checkpoint directory (the base)
    model: str = "phantom-tiny"
    data: str = "data/phantoms"  # manifest dataset (dir with manifest.jsonl, .jsonl, or medvlsm)
    out: str = "runs/train"  # run directory: last/, best/, metrics.jsonl, curves.png
    train_split: str = "train"
    val_split: str = "val"
    epochs: int = 10
    max_steps: int | None = None  # stop early after this many optimizer steps
    batch_size: int = 16
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate (train: the decoder's; tune: the learner's)
    weight_decay: float = 0.01  # AdamW
    warmup_steps: int = 100  # linear warm-up, then cosine decay to 0 at the last step
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    seed: int = 0  # data order and augmentation (tune: also the few-shot draw and learner init)
    num_workers: int = 2  # data loader processes
    # train-time augmentation (vlseg.data.transforms): true, false, or a mapping of
    # AugmentConfig ranges, e.g. {gamma: [0.5, 2.0], noise_std: 0.05, invert_grey: 0.15}
    augment: bool | dict = True
    dice_weight: float = 1.0  # mask loss: Dice on positive pairs + BCE on all pairs
    bce_weight: float = 1.0
    presence_weight: float = 0.5  # "is the target in the image" BCE
    aux_weight: float = 0.4  # deep supervision at coarser decoder scales
    clip_weight: float = 0.2  # image-caption contrastive loss (keeps the towers aligned)
    eval_every: int = 1  # epochs between validations (the last epoch is always validated)
    val_limit: int | None = 400  # validation items per evaluation (None = all)
    log_every: int = 20  # optimizer steps between metrics.jsonl train rows
    resume: bool = True  # continue from out/last if it exists

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "eval_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: use an integer >= 1")
        if isinstance(self.augment, dict):  # unknown keys and bad ranges fail here, not later
            from .data.transforms import AugmentConfig

            AugmentConfig.from_mapping(self.augment)
        elif not isinstance(self.augment, bool):
            raise ValueError(f"augment={self.augment!r}: use true, false or a mapping of ranges")


@dataclass
class TrainConfig(LoopConfig):
    """One training run of ``vlseg train``: the loop settings of ``LoopConfig`` plus these."""

    init: str | None = None  # checkpoint directory to start from (weights only)
    lr_encoder: float = 1e-4  # learning rate of trainable encoder parameters (lr: the decoder's)
    train_only: list[str] | None = None  # parameter-name prefixes to train; None = all trainable
    word_dropout: float = 0.0  # training: drop each word from cross-attention with this prob.
    sentence_only: float = 0.0  # training: drop all words of a prompt (sentence token remains)
    model_overrides: dict | None = None  # ModelConfig keys changed on ``init`` (no new weights)


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "") -> T:
    """Build a dataclass from a mapping, rejecting unknown keys with the list of valid ones."""
    if not isinstance(data, dict):
        raise TypeError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    valid = _field_names(cls)
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(
            f"{where or cls.__name__}: unknown key(s) {', '.join(unknown)}; "
            f"valid keys: {', '.join(valid)}"
        )
    hints = typing.get_type_hints(cls)
    data = {k: _coerce(k, v, hints.get(k), where or cls.__name__) for k, v in data.items()}
    return cls(**data)


def _coerce(key: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field's scalar type: numbers written as strings (YAML reads ``1e-3``
    without a dot as a string) become numbers; a value of the wrong kind is an error that names
    the key, instead of a TypeError deep inside training."""
    if hint is None or value is None:
        return value
    args = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    kinds = {a for a in args if a in (int, float, bool, str)}
    if not isinstance(value, (str, int, float)):  # mappings and lists: checked where used
        return value
    if not kinds or type(value) in kinds or not (kinds & {int, float, bool}):
        return value
    if int in kinds and isinstance(value, float) and value.is_integer():
        return int(value)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if bool in kinds and text.lower() in ("true", "false", "yes", "no"):
            return text.lower() in ("true", "yes")
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None:
            if float in kinds:
                return number
            if int in kinds and number.is_integer():
                return int(number)
    if float in kinds and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    want = " or ".join(sorted(k.__name__ for k in kinds if k is not str))
    raise ValueError(f"{where}: {key}={value!r} must be {want}")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    return data


def _parse_value(raw: str) -> Any:
    """YAML value, except that numbers YAML 1.1 leaves as strings (``5e-4``) become floats."""
    if raw == "":
        return None
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str], *, valid: list[str]) -> dict:
    """Apply ``key=value`` strings (values parsed as YAML) to a config mapping.

    Dotted keys (``clip.name=ViT-B-16``) set nested entries.
    """
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. epochs=5)")
        key, raw = item.split("=", 1)
        head, *rest = key.split(".")
        if head not in valid:
            raise ValueError(f"unknown override key {head!r}; valid keys: {', '.join(valid)}")
        value = _parse_value(raw)
        if rest:
            node = data.setdefault(head, {})
            for part in rest[:-1]:
                node = node.setdefault(part, {})
            node[rest[-1]] = value
        else:
            data[head] = value
    return data


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_yaml(data: dict[str, Any], path: str | os.PathLike) -> None:
    """Write YAML atomically (:func:`vlseg.atomic.write_yaml`)."""
    write_yaml(path, data)
