"""Zero-shot classification evaluation over a manifest dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data.io import atomic_write
from .data.manifest import read_manifest
from .metrics import balanced_accuracy, confusion_matrix, macro_auroc, top1_accuracy
from .predictor import ovr_log_odds


def image_labels(data: str | os.PathLike, split: str | None, modality: str | None = None):
    """Unique (image path, label) pairs of a manifest, optionally of one modality."""
    seen: dict[Path, str] = {}
    for r in read_manifest(data, split):
        if r.label and (modality is None or r.modality == modality) and r.image not in seen:
            seen[r.image] = r.label
    if not seen:
        raise ValueError(f"no labelled images in {data} (split={split}, modality={modality})")
    return list(seen), list(seen.values())


def evaluate_classification(
    segmenter,
    images: list,
    labels: list[str],
    classes: list[str],
    *,
    prompts: list[str] | None = None,
    templates=None,
    batch_size: int = 32,
    progress: bool = False,
) -> dict:
    """Top-1, balanced accuracy, macro AUROC and the confusion matrix.

    Args:
        segmenter: a ``Segmenter``.
        images: image paths (or arrays).
        labels: ground-truth class of each image (must be in ``classes``).
        classes: the label vocabulary, in output order.
        prompts: the text used for each class in the prompts (default: the class names).
        templates: template ensemble for ``Segmenter.classify``.
    """
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    prompts = prompts or classes
    probs, logits = [], []
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="classify"):
        res = segmenter.classify(images[start : start + batch_size], prompts, templates)
        probs.extend(r.probs for r in res)
        logits.extend(r.logits for r in res)
    probs = np.stack(probs)
    scores = ovr_log_odds(np.stack(logits))
    y = np.array([classes.index(lab) for lab in labels])
    return {
        "n": len(y),
        "classes": classes,
        "top1": top1_accuracy(probs, y),
        "balanced_accuracy": balanced_accuracy(probs, y),
        # ranked by log-odds: float32 probabilities saturate at 0/1 and would tie
        "macro_auroc": macro_auroc(scores, y),
        "confusion": confusion_matrix(probs, y, len(classes)).tolist(),
        "probs": probs,
    }


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | os.PathLike):
    """Write a confusion-matrix PNG (rows true, columns predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
