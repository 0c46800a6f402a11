"""Presence calibration: temperature / Platt scaling fitted on validation logits, ECE and the
reliability diagram (Guo et al., 2017, "On calibration of modern neural networks")."""

from __future__ import annotations

import os
import warnings

import numpy as np
from scipy.optimize import minimize

from .atomic import atomic_write


def _nll(logits: np.ndarray, labels: np.ndarray) -> float:
    # log(1 + exp(-y z)) for y in {-1, +1}, computed stably
    signed = np.where(labels, logits, -logits)
    return float(np.mean(np.logaddexp(0.0, -signed)))


MIN_PER_CLASS = 30  # present and absent validation expressions for a calibration
MIN_OOD_IMAGES = (50, 20)  # training and validation images for the out-of-domain fit
PLAUSIBLE_TEMPERATURE = (0.05, 20.0)


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


def _unique_images(ds, limit: int | None) -> list:
    seen = list(dict.fromkeys(r.image for r in ds.records))
    if limit is not None and len(seen) > limit:
        seen = [seen[int(i)] for i in np.linspace(0, len(seen) - 1, limit).round()]
    return seen


def presence_logits(seg, ds, *, limit: int | None = None, progress: bool = False):
    """(raw presence logits, labels) of a dataset's expressions, through the inference core."""
    from .evaluation import evaluate

    logits, labels = [], []

    def keep(rec, res, target, positive) -> None:
        logits.append(res.presence_logit)
        labels.append(positive)

    evaluate(
        seg.model,
        ds,
        device=seg.device,
        limit=limit,
        original_resolution=False,
        progress=progress,
        on_item=keep,
    )
    return np.array(logits), np.array(labels, dtype=bool)


def ood_features(seg, images: list, *, batch_size: int = 32, kind: str | None = None) -> np.ndarray:
    """The out-of-domain features (``vlseg.ood.ood_features``, default kind) of image paths,
    in batches."""
    from .ood import DEFAULT_FEATURES
    from .ood import ood_features as features_of

    kind = kind or DEFAULT_FEATURES
    out = [
        features_of(seg.encode(images[i : i + batch_size]).features.maps, kind)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def calibrate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    *,
    val_split: str = "val",
    train_split: str = "train",
    method: str = "temperature",
    unsure: tuple[float, float] | None = (0.2, 0.8),
    ood_quantile: float = 0.99,
    limit: int | None = None,
    image_limit: int | None = 2000,
    ood_data: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    progress: bool = True,
    allow_small: bool = False,
) -> dict:
    """Fit how a checkpoint is served on its data, and record it in the checkpoint directory.

    - presence calibration (``method``) fitted on ``val_split``'s expressions;
    - the "unsure" band of calibrated presence probabilities;
    - the out-of-domain fit on ``train_split``'s images (``ood.safetensors``) and the
      threshold: the ``ood_quantile`` quantile of ``val_split``'s image scores, both of
      ``ood_data`` (default ``data``): the images whose look the model should accept, e.g.
      its domain-randomised training data.

    Nothing is written when the fit cannot be trusted: fewer than :data:`MIN_PER_CLASS`
    present or absent validation expressions, fewer than :data:`MIN_OOD_IMAGES` training or
    validation images for the out-of-domain fit, or a temperature outside
    :data:`PLAUSIBLE_TEMPERATURE` (a validation set the model separates perfectly: every score
    would become 0 or 1 and "unsure" could never be answered). ``allow_small`` turns these
    refusals into warnings (tests, smoke runs).

    Returns:
        What was fitted and measured (ECE before/after on val, temperature, threshold, ...).
    """
    from dataclasses import replace
    from pathlib import Path

    from .config import load_yaml, save_yaml
    from .data.manifest import ManifestDataset
    from .ood import fit_ood
    from .predictor import load

    ckpt = Path(checkpoint)
    if not (ckpt / "config.yaml").is_file():
        raise ValueError(
            f"{checkpoint} is not a checkpoint directory (no config.yaml); calibration is "
            "written into the checkpoint, so copy a shipped model first (its folder is "
            "vlseg/weights/<name> inside the installed package), e.g. `cp -r .../vlseg/"
            "weights/phantom-tiny my-model`, and pass --model my-model"
        )

    def refuse(why: str) -> None:
        if not allow_small:
            raise ValueError(f"{why}; nothing was written (allow_small / --allow-small to force)")
        warnings.warn(why, stacklevel=3)

    seg = load(ckpt)
    seg.serving = replace(seg.serving, calibration=None, unsure=None, ood_threshold=None)
    seg.ood = None
    vis = seg.model.vision

    def dataset(split, source=data):
        return ManifestDataset(
            source, split, image_size=seg.image_size, mean=vis.mean, std=vis.std, prompt="all"
        )

    val = dataset(val_split)
    z, y = presence_logits(seg, val, limit=limit, progress=progress)
    n_pos, n_neg = int(np.sum(y)), int(np.sum(~np.asarray(y, dtype=bool)))
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        refuse(
            f"{val_split} has {n_pos} present and {n_neg} absent expressions: too few to fit a "
            f"calibration (at least {MIN_PER_CLASS} of each); use more data or a larger --limit"
        )
    cal = fit_calibration(z, y, method)
    t = cal.get("temperature", 1.0 / max(abs(cal.get("a", 1.0)), 1e-12))
    lo, hi = PLAUSIBLE_TEMPERATURE
    if not lo <= t <= hi:
        refuse(
            f"the fitted temperature {t:.3g} is outside [{lo:g}, {hi:g}]: {val_split} is too "
            "easy or too small to calibrate on (a model that separates it perfectly gets every "
            "score pushed to 0 or 1); use harder or more validation data"
        )
    calibrated = replace(seg.serving, calibration=cal)
    p_raw = 1 / (1 + np.exp(-z))
    p_cal = 1 / (1 + np.exp(-calibrated.calibrate(z)))
    ood_source = data if ood_data is None else ood_data
    train_images = _unique_images(dataset(train_split, ood_source), image_limit)
    val_images = _unique_images(dataset(val_split, ood_source), image_limit)
    if len(train_images) < MIN_OOD_IMAGES[0] or len(val_images) < MIN_OOD_IMAGES[1]:
        refuse(
            f"the out-of-domain fit needs at least {MIN_OOD_IMAGES[0]} {train_split} and "
            f"{MIN_OOD_IMAGES[1]} {val_split} images, got {len(train_images)} and "
            f"{len(val_images)}"
        )
    detector = fit_ood(ood_features(seg, train_images))
    val_scores = detector.score(ood_features(seg, val_images))
    threshold = float(np.quantile(val_scores, ood_quantile))
    serving = replace(calibrated, unsure=unsure, ood_threshold=threshold)
    meta = load_yaml(ckpt / "config.yaml")
    meta["serving"] = serving.to_dict()
    detector.save(ckpt)
    save_yaml(meta, ckpt / "config.yaml")
    out = {
        "calibration": cal,
        "unsure": list(unsure) if unsure else None,
        "ood_threshold": threshold,
        "ood_features": detector.features,
        "val_expressions": int(len(z)),
        "val_ece_raw": expected_calibration_error(p_raw, y),
        "val_ece_calibrated": expected_calibration_error(p_cal, y),
        "ood_train_images": len(train_images),
        "ood_val_images": len(val_images),
    }
    if report is not None:
        rep = Path(report)
        reliability_diagram(
            {"raw": (p_raw, y), "calibrated": (p_cal, y)}, rep / "reliability_val.png"
        )
        from .atomic import write_json

        write_json(rep / "calibration.json", out)
    return out
