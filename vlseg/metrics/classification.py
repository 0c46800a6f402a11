"""Classification metrics: top-1 and balanced accuracy, confusion matrix, AUROC."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from vlseg.metrics._convert import ArrayLike, binarize, class_ids, to_numpy

__all__ = ["balanced_accuracy", "binary_auroc", "confusion_matrix", "macro_auroc", "top1_accuracy"]


def _scores(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    s = to_numpy(scores, name).astype(np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, C) with N >= 1, got {s.shape}")
    if np.isnan(s).any():
        raise ValueError(f"{name} contains NaN")
    return s


def _check_ids_below(labels: np.ndarray, num_columns: int) -> None:
    if labels.max() >= num_columns:
        raise ValueError(f"labels holds class id {labels.max()}; scores has {num_columns} columns")


def _pred_ids(pred: ArrayLike) -> np.ndarray:
    """(N,) class ids, or (N, C) scores reduced by argmax."""
    p = to_numpy(pred, "pred")
    if p.ndim == 2:
        return _scores(p, "pred").argmax(axis=1)
    return class_ids(p, "pred")


def top1_accuracy(scores: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of rows whose highest score is the true class.

    Args:
        scores: (N, C) probabilities or logits.
        labels: (N,) class ids in [0, C).

    Returns:
        Accuracy in [0, 1].
    """
    s = _scores(scores)
    y = class_ids(labels, "labels", len(s))
    _check_ids_below(y, s.shape[1])
    return float((s.argmax(axis=1) == y).mean())


def confusion_matrix(pred: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts ``M[true, predicted]`` (rows are labels, as in scikit-learn).

    Args:
        pred: (N,) predicted class ids, or (N, C) scores (argmax is taken).
        labels: (N,) true class ids.
        num_classes: C; every id must lie in [0, C).

    Returns:
        (C, C) int64 matrix that sums to N.
    """
    p = _pred_ids(pred)
    y = class_ids(labels, "labels", len(p))
    for name, v in (("pred", p), ("labels", y)):
        if v.size and v.max() >= num_classes:
            raise ValueError(f"{name} holds class id {v.max()} but num_classes={num_classes}")
    flat = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def balanced_accuracy(pred: ArrayLike, labels: ArrayLike) -> float:
    """Mean per-class recall over the classes present in ``labels``.

    Matches ``sklearn.metrics.balanced_accuracy_score(labels, pred)``: a class that is only
    predicted, never true, is left out of the mean.

    Args:
        pred: (N,) predicted class ids, or (N, C) scores (argmax is taken).
        labels: (N,) true class ids.

    Returns:
        Balanced accuracy in [0, 1].
    """
    p = _pred_ids(pred)
    y = class_ids(labels, "labels", len(p))
    if y.size == 0:
        raise ValueError("balanced_accuracy needs at least one sample, got N=0")
    cm = confusion_matrix(p, y, int(max(p.max(), y.max())) + 1)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def binary_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve for one binary problem (e.g. target present vs absent).

    Computed as the Mann-Whitney U statistic with average ranks, so tied scores count one half,
    exactly as ``sklearn.metrics.roc_auc_score``.

    Args:
        scores: (N,) real scores, higher meaning more likely positive.
        labels: (N,) bool or {0, 1}.

    Returns:
        AUROC in [0, 1]; NaN when ``labels`` holds only one class (scikit-learn raises instead).
    """
    s = to_numpy(scores, "scores").astype(np.float64)
    y = binarize(labels, "labels")
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must both have shape (N,)")
    if np.isnan(s).any():
        raise ValueError("scores contains NaN")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = rankdata(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """One-vs-rest AUROC averaged over classes.

    Equals ``sklearn.metrics.roc_auc_score(labels, scores, multi_class="ovr", average="macro")``
    when every class occurs in ``labels``. Unlike scikit-learn (which raises), a class with no
    positives or no negatives is skipped, and the mean runs over the remaining classes. Each
    column is ranked as given, so logits and softmax probabilities can give different values;
    pass probabilities to compare with scikit-learn.

    Args:
        scores: (N, C) per-class scores.
        labels: (N,) class ids in [0, C).

    Returns:
        Macro AUROC in [0, 1]; NaN when no class has both positives and negatives.
    """
    s = _scores(scores)
    y = class_ids(labels, "labels", len(s))
    _check_ids_below(y, s.shape[1])
    aucs = [binary_auroc(s[:, c], y == c) for c in range(s.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")
