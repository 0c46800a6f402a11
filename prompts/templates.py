"""Prompt ensembles and label sets as data files, loadable by name."""

from __future__ import annotations

from pathlib import Path

import yaml

_HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = _HERE / "templates"
LABEL_DIR = _HERE / "labels"


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def list_templates() -> list[str]:
    """Names of the shipped template ensembles."""
    return _names(TEMPLATE_DIR)


def list_label_sets() -> list[str]:
    """Names of the shipped label sets."""
    return _names(LABEL_DIR)


def load_templates(spec: str | list[str] | None = None) -> list[str]:
    """A template ensemble: a shipped name, a YAML path, or a list of strings with ``{}``.

    None gives the ``generic`` ensemble.
    """
    if spec is None:
        spec = "generic"
    if isinstance(spec, str):
        path = TEMPLATE_DIR / f"{spec}.yaml" if not spec.endswith((".yaml", ".yml")) else Path(spec)
        if not path.is_file():
            raise ValueError(
                f"unknown template set {spec!r}; available: "
                f"{', '.join(list_templates())} (or a YAML file, or a list)"
            )
        spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, list) or not spec or not all(isinstance(t, str) for t in spec):
        raise ValueError("templates must be a non-empty list of strings")
    bad = [t for t in spec if t.count("{}") != 1]
    if bad:
        raise ValueError(f"each template needs exactly one '{{}}' for the class name; bad: {bad}")
    return list(spec)


def load_labels(spec: str) -> dict[str, str]:
    """A label set ``{code: class name}``: a shipped name or a YAML path."""
    path = LABEL_DIR / f"{spec}.yaml" if not spec.endswith((".yaml", ".yml")) else Path(spec)
    if not path.is_file():
        raise ValueError(f"unknown label set {spec!r}; available: {', '.join(list_label_sets())}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping code: class name")
    return {str(k): str(v) for k, v in data.items()}
