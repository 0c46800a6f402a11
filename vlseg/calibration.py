"""Presence calibration: temperature / Platt scaling fitted on validation logits, ECE and the
reliability diagram (Guo et al., 2017, "On calibration of modern neural networks")."""

from __future__ import annotations

import os

import numpy as np
from scipy.optimize import minimize

from .atomic import atomic_write


def _nll(logits: np.ndarray, labels: np.ndarray) -> float:
    # log(1 + exp(-y z)) for y in {-1, +1}, computed stably
    signed = np.where(labels, logits, -logits)
    return float(np.mean(np.logaddexp(0.0, -signed)))


def fit_calibration(logits, labels, method: str = "temperature") -> dict:
    """The calibration (``serving.calibration``) that minimises the validation NLL.

    Args:
        logits: (N,) raw presence logits.
        labels: (N,) bool, whether the described thing is in the image.
        method: "temperature" (z / T, keeps the ranking and the 0.5 point) or "platt"
            (a * z + b).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if z.shape != y.shape or z.ndim != 1 or len(z) < 2:
        raise ValueError(f"need matching 1-D logits and labels, got {z.shape} and {y.shape}")
    if y.all() or not y.any():
        raise ValueError("calibration needs both present and absent examples")
    if method == "temperature":
        res = minimize(lambda p: _nll(z / np.exp(p[0]), y), x0=[0.0], method="Nelder-Mead")
        return {"method": "temperature", "temperature": float(np.exp(res.x[0]))}
    if method == "platt":
        res = minimize(lambda p: _nll(p[0] * z + p[1], y), x0=[1.0, 0.0], method="Nelder-Mead")
        return {"method": "platt", "a": float(res.x[0]), "b": float(res.x[1])}
    raise ValueError(f"calibration method {method!r}; valid: temperature, platt")


def expected_calibration_error(probs, labels, *, bins: int = 15) -> float:
    """ECE of binary presence probabilities: the bin-weighted mean |accuracy - confidence| over
    equal-width bins of the predicted probability of "present"."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(ece)


def reliability_diagram(curves: dict, path: str | os.PathLike, *, bins: int = 15) -> None:
    """Write a reliability diagram PNG: ``curves`` maps a name to (probs, labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
    edges = np.linspace(0.0, 1.0, bins + 1)
    for name, (probs, labels) in curves.items():
        p, y = np.asarray(probs, float), np.asarray(labels, float)
        which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
        xs = [p[which == b].mean() for b in range(bins) if (which == b).any()]
        ys = [y[which == b].mean() for b in range(bins) if (which == b).any()]
        ece = expected_calibration_error(p, y, bins=bins)
        ax.plot(xs, ys, "o-", ms=3, label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("predicted probability of 'present'")
    ax.set_ylabel("observed frequency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
