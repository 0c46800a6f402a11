"""Referring-segmentation evaluation over a manifest, through the inference core.

A prediction here is exactly what a user of ``Segmenter.segment`` gets for the same image and
text: the same ``encode`` / ``decode`` / ``postprocess`` (:mod:`vlseg.inference`), the same
serving threshold and calibration, and the same lesion-level referring (a prompt naming one
instance, "the largest hepatic lesion", is answered by resolving the base prompt's components:
:mod:`vlseg.referring`; ``referring=False`` scores the model's direct answer instead).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from .data.io import LoadedImage, load_image
from .data.manifest import ManifestDataset, collate, load_record_target
from .inference import decode, encode, postprocess
from .metrics import SegmentationMeter, binary_auroc
from .referring import parse_selector, plan_referring
from .requests import model_text
from .serving import ServingConfig


@torch.no_grad()
def _guide_image(ds: ManifestDataset, index: int) -> LoadedImage:
    """The item's image as ``Segmenter`` loads it (the guide of ``serving.refine``)."""
    r = ds.record_for(index)
    return load_image(r.image, slice_index=r.slice_index, window=ds.window)


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
    vocabulary=None,
    referring: bool = True,
    ood=None,
    strip_requests: bool = False,
    requests: dict | None = None,
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
        vocabulary: the model's training words (``Segmenter.vocabulary``): results then name
            a prompt's unfamiliar words and answer "unsure" for them, as users get them.
        referring: answer prompts that name one instance through the referring resolver, as
            ``Segmenter.segment`` does (False: the model's direct answer to the text).
        ood: an out-of-domain fit (``Segmenter.ood``): images it flags are answered
            "out-of-domain" with an empty mask, as users get them (None: no check).
        strip_requests: give the model the description inside a prompt typed as a request
            in a form it was not trained with (``vlseg.requests.model_text``), as
            ``Segmenter.segment`` does (pass ``seg.strip_requests`` and ``seg.requests``);
            False (the default, e.g. for training-time validation): each prompt as typed.
        requests: the model's training request forms (``Segmenter.requests``; None: unknown,
            every request is reduced to its description).
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
        images = None
        if original_resolution and serving.refine is not None:  # the guide, as users get it
            images = [_guide_image(ds, i) for i in batch["index"]]
        encoded = encode(model, pixels, sizes, batch["spacing"], images=images, ood=ood)
        given = list(batch["text"])
        texts = [model_text(t, requests) for t in given] if strip_requests else given
        selectors = [parse_selector(t) if referring else None for t in texts]
        plan = plan_referring(texts, range(len(texts)), selectors)
        answers = postprocess(
            decode(model, encoded, plan.texts, plan.rows),
            encoded,
            serving,
            size=None if original_resolution else input_size,
            vocabulary=vocabulary,
        )
        spacings = batch["spacing"] if original_resolution else [None] * len(texts)
        results = plan.resolve(answers, spacings)
        for j, res in enumerate(results):
            res.text = given[j]
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


def is_volume_record(record) -> bool:
    """A manifest record that points at a volume (``"volume": true``, or a 3-D NIfTI, a DICOM
    series directory or a ``.zip``) and has no ``slice`` picking one 2-D slice of it."""
    from .data.volume_io import is_volume_source

    if record.slice_index is not None:
        return False
    flag = record.extra.get("volume")
    if flag is not None:
        return bool(flag)
    return is_volume_source(record.image)


@torch.no_grad()
def evaluate_served(seg, ds: ManifestDataset, **kwargs) -> dict[str, float]:
    """:func:`evaluate` with a ``Segmenter``'s model, device, serving settings and handling
    of request phrasing (``strip_requests``, ``requests``); other keywords as there."""
    kwargs.setdefault("serving", seg.serving)
    kwargs.setdefault("device", seg.device)
    kwargs.setdefault("strip_requests", seg.strip_requests)
    kwargs.setdefault("requests", seg.requests)
    return evaluate(seg.model, ds, **kwargs)


def evaluate_volumes(
    seg,
    records,
    *,
    limit: int | None = None,
    all_prompts: bool = True,
    progress: bool = False,
    on_item: Callable[..., None] | None = None,
) -> dict[str, float]:
    """3-D referring segmentation metrics over volume records, through ``Segmenter.segment``.

    Each volume is encoded once; every prompt of every record on it only runs the decoder.
    Per positive expression: 3-D Dice, HD95 in mm, the volume's relative error and, for
    lesion targets, the error of the largest finding's longest axial diameter (RECIST). Per
    negative expression: whether a finding was claimed. Ground truth is measured by the same
    code as predictions (:func:`vlseg.volume.measure_components`).

    Args:
        seg: a ``Segmenter``.
        records: manifest records pointing at volumes (:func:`is_volume_record`).
        limit: score at most this many records (evenly spaced).
        all_prompts: every expression of a record (else its first).
        on_item: called as ``on_item(record, text, result, row)`` with the per-expression
            metrics ``row`` (a dict).

    Returns:
        ``dice`` (mean 3-D Dice over positive expressions), ``hd95_mm`` (mean), ``volume_error``
        (median |relative volume error|), ``diameter_error_mm`` (median |longest-diameter
        error| over lesion targets), ``presence_auroc``, ``present_on_negatives`` (fraction of
        negative expressions answered present), counts, and ``dice/<target>`` per target.
    """
    from .data.volume_io import read_volume
    from .metrics import dice as dice_fn
    from .metrics import hd95 as hd95_fn
    from .volume import measure_components, remove_specks

    records = list(records)
    if limit is not None and limit < len(records):
        keep = np.linspace(0, len(records) - 1, limit).round().astype(int)
        records = [records[i] for i in keep]
    by_image: dict[str, list] = {}
    for r in records:
        by_image.setdefault(str(r.image), []).append(r)
    rows, scores, labels = [], [], []
    bar = tqdm(total=len(records), disable=not progress, desc="eval volumes")
    for image, recs in by_image.items():
        encoded = seg.encode_volume(image)
        volume = encoded.volume
        for rec in recs:
            target = None
            if rec.mask is not None:
                # the mask file read like the image: slices in display orientation
                target = read_volume(rec.mask).values > 0.5
                if target.shape != volume.values.shape:
                    raise ValueError(
                        f"{rec.where()}: mask {rec.mask} has {target.shape[0]} slices of "
                        f"{target.shape[1:]} where the volume has {volume.values.shape[0]} of "
                        f"{volume.values.shape[1:]}; masks must be on the volume's voxel grid"
                    )
            positive = bool(rec.positive) and target is not None and bool(target.any())
            for text in rec.prompts if all_prompts else rec.prompts[:1]:
                res = seg.segment(encoded, text)
                pred = volume.from_stored(res.mask)
                row = {"target": rec.target or "", "positive": positive, "score": res.score}
                row["present"] = res.present
                if positive:
                    row["dice"] = dice_fn(pred, target)
                    sp = volume.spacing
                    row["hd95_mm"] = hd95_fn(pred, target, sp) if pred.any() else float("nan")
                    gt_vox = int(target.sum())
                    row["volume_error"] = (int(pred.sum()) - gt_vox) / gt_vox
                    if "lesion" in (rec.target or ""):
                        _, glabels, gn = remove_specks(target, 1)
                        gt_d = measure_components(glabels, gn, sp, max_measured=1)[1]
                        if gt_d and res.diameters_mm:
                            row["diameter_error_mm"] = res.diameters_mm[0][0] - gt_d[0][0]
                rows.append(row)
                scores.append(res.score)
                labels.append(positive)
                if on_item is not None:
                    on_item(rec, text, res, row)
            bar.update(1)
    bar.close()
    return summarize_volume_rows(rows, scores, labels)


def summarize_volume_rows(rows, scores, labels) -> dict[str, float]:
    """Aggregate :func:`evaluate_volumes`' per-expression rows."""
    pos = [r for r in rows if r["positive"]]
    neg = [r for r in rows if not r["positive"]]

    def finite(key, rs):
        return np.array([r[key] for r in rs if key in r and np.isfinite(r[key])], dtype=float)

    out: dict[str, float] = {
        "n": float(len(pos)),
        "n_all": float(len(rows)),
        "dice": float(np.mean(finite("dice", pos))) if pos else float("nan"),
        "hd95_mm": float(np.mean(finite("hd95_mm", pos))) if pos else float("nan"),
        "volume_error": float(np.median(np.abs(finite("volume_error", pos))))
        if pos
        else float("nan"),
    }
    diam = finite("diameter_error_mm", pos)
    out["diameter_error_mm"] = float(np.median(np.abs(diam))) if diam.size else float("nan")
    out["n_diameters"] = float(diam.size)
    out["present_on_negatives"] = (
        float(np.mean([r["present"] for r in neg])) if neg else float("nan")
    )
    if any(labels) and not all(labels):
        out["presence_auroc"] = float(binary_auroc(np.array(scores), np.array(labels)))
    for t in sorted({r["target"] for r in neg}):
        out[f"present_on_negatives/{t}"] = float(
            np.mean([r["present"] for r in neg if r["target"] == t])
        )
    for t in sorted({r["target"] for r in pos}):
        out[f"dice/{t}"] = float(np.mean(finite("dice", [r for r in pos if r["target"] == t])))
        lesion = [r for r in pos if r["target"] == t]
        vol = finite("volume_error", lesion)
        out[f"volume_error/{t}"] = float(np.median(np.abs(vol)))
    return out
