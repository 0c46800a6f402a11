"""Prompt templates (zero-shot ensembles), label sets and prompt learners.

This package works on open_clip towers and never imports ``vlseg``.
"""

from prompts.templates import list_label_sets, list_templates, load_labels, load_templates

__all__ = ["list_label_sets", "list_templates", "load_labels", "load_templates"]
