"""Referring-segmentation evaluation over a manifest, through the inference core.

A prediction here is exactly what a user of ``Segmenter.segment`` gets for the same image and
text: the same ``encode`` / ``decode`` / ``postprocess`` (:mod:`vlseg.inference`), the same
serving threshold and calibration.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from .data.manifest import ManifestDataset, collate, load_record_target
from .inference import decode, encode, postprocess
from .metrics import SegmentationMeter, binary_auroc
from .serving import ServingConfig


@torch.no_grad()
def evaluate(
    model,
    ds: ManifestDataset,
    *,
    batch_size: int = 16,
    device=None,
    limit: int | None = None,
    original_resolution: bool = True,
    serving: ServingConfig | None = None,
    progress: bool = False,
    on_item: Callable[..., None] | None = None,
    hd95: bool = True,
) -> dict[str, float]:
    """Referring segmentation metrics over a dataset.

    A prediction is the thresholded mask gated by the presence score (an absent verdict predicts
    an empty mask), compared at the original image resolution by default (HD95 in mm when the
    pixel spacing is known). Returns Dice, mIoU, oIoU, Prec@0.5/0.7/0.9 and HD95 over positive
    expressions, Dice over all expressions (``dice_all``: a correct "not found" on a negative
    scores 1), and presence AUROC / accuracy.

    Args:
        model: a ``VLSegModel``.
        ds: the dataset (its images are already resized and normalised for ``model``).
        limit: score an evenly spaced subset of this many expressions.
        original_resolution: score at each file's resolution; False scores the resized masks
            at the model's input size (quick validation during training).
        serving: threshold and calibration (default ``ServingConfig()``: 0.5, uncalibrated).
        on_item: called as ``on_item(record, result, target, positive)`` for every scored
            expression (e.g. to break the metrics down by target).
        hd95: also compute HD95 (at the original resolution only; the slowest metric).
    """
    serving = serving or ServingConfig()
    device = device or next(model.parameters()).device
    model.eval()
    n = len(ds) if limit is None else min(limit, len(ds))
    # An evenly spaced subset keeps both modalities and all targets when limited.
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int) if n < len(ds) else np.arange(n)
    pos_meter = SegmentationMeter(with_hd95=original_resolution and hd95)
    all_meter = SegmentationMeter(with_hd95=False)
    scores, labels = [], []
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="eval"):
        batch = collate([ds[int(i)] for i in idx[start : start + batch_size]])
        pixels = batch["image"].to(device)
        input_size = tuple(pixels.shape[-2:])
        sizes = [tuple(s) for s in batch["orig_size"]]
        encoded = encode(model, pixels, sizes, batch["spacing"])
        results = postprocess(
            decode(model, encoded, batch["text"]),
            encoded,
            serving,
            size=None if original_resolution else input_size,
        )
        for j, res in enumerate(results):
            if original_resolution:
                # the mask at the file's resolution (its slice for a volume)
                target = load_record_target(ds.record_for(batch["index"][j]), size=sizes[j])
            else:
                target = batch["mask"][j, 0].numpy() > 0.5
            positive = bool(batch["positive"][j] > 0.5)
            all_meter.update(res.mask, target)
            if positive:
                spacing = batch["spacing"][j] if original_resolution else None
                pos_meter.update(res.mask, target, spacing=spacing)
            scores.append(res.score)
            labels.append(positive)
            if on_item is not None:
                on_item(ds.record_for(batch["index"][j]), res, target, positive)
    out = pos_meter.compute()
    out["dice_all"] = all_meter.compute()["dice"]
    out["presence_auroc"] = binary_auroc(np.array(scores), np.array(labels))
    out["presence_acc"] = float(
        np.mean((np.array(scores) >= serving.threshold) == np.array(labels))
    )
    out["n_all"] = n
    return {k: float(v) for k, v in out.items()}
