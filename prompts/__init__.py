"""Prompt templates and prompt learners (no vlseg imports)."""
