"""Prompt templates (zero-shot ensembles), label sets and prompt learners.

Learners (imported lazily, they need torch): ``CoOp``, ``CoCoOp``, ``VPT``, ``MaPLe`` (all
``PromptLearner`` subclasses) and the peft LoRA helpers in ``prompts.lora``.

This package works on open_clip towers and never imports ``vlseg``.
"""

from prompts.templates import list_label_sets, list_templates, load_labels, load_templates

_LEARNERS = {
    "PromptLearner": "prompts.base",
    "CoOp": "prompts.coop",
    "CoCoOp": "prompts.cocoop",
    "VPT": "prompts.vpt",
    "MaPLe": "prompts.maple",
}

__all__ = ["list_label_sets", "list_templates", "load_labels", "load_templates", *_LEARNERS]


def __getattr__(name: str):
    if name in _LEARNERS:
        import importlib

        return getattr(importlib.import_module(_LEARNERS[name]), name)
    raise AttributeError(f"module 'prompts' has no attribute {name!r}")
