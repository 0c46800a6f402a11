"""Procedural medical phantoms with exact masks and referring expressions.

Each sample is a pure function of ``(seed, index, split kind)``: the same call gives the same
bytes on any machine, which makes the phantoms usable as a fixed benchmark.

Example:
    >>> from vlseg.data.phantoms import generate_sample
    >>> s = generate_sample(seed=7, index=0, modality="ct", size=128)
    >>> s.image.shape, s.targets[0].prompts[0] != ""
    ((128, 128), True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...atomic import atomic_directory
from . import language as lang
from .ct import ct_caption, ct_targets, render_ct
from .dermoscopy import CLASSES as DERM_CLASSES
from .dermoscopy import derm_caption, derm_targets, render_dermoscopy
from .randomize import APPEARANCES
from .sample import PhantomObject, PhantomSample, Target

__all__ = [
    "APPEARANCES",
    "MODALITIES",
    "SPLITS",
    "DERM_CLASSES",
    "PhantomObject",
    "PhantomSample",
    "Target",
    "generate_sample",
    "iter_samples",
    "write_dataset",
    "split_of",
]

MODALITIES = ("ct", "dermoscopy")
SPLITS = ("train", "val", "test", "test_heldout", "test_unknown_words")
_SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def split_of(seed: int, index: int) -> str:
    """The split (train/val/test, 80/10/10) of regular sample ``index`` under ``seed``."""
    u = np.random.default_rng([seed, index, 1]).random()
    acc = 0.0
    for name, frac in _SPLIT_FRACTIONS:
        acc += frac
        if u < acc:
            return name
    return "test"


def _check_modality(modality: str) -> None:
    if modality not in (*MODALITIES, "all"):
        raise ValueError(f"unknown modality {modality!r}; available: {', '.join(MODALITIES)}, all")


def _check_appearance(appearance: str) -> None:
    if appearance not in APPEARANCES:
        raise ValueError(f"unknown appearance {appearance!r}; available: {', '.join(APPEARANCES)}")


def generate_sample(
    *,
    seed: int,
    index: int,
    modality: str,
    size: int = 256,
    heldout: bool = False,
    prompts_per_target: int = 6,
    appearance: str = "classic",
) -> PhantomSample:
    """Render one phantom with its targets, caption and label.

    Args:
        seed: dataset seed.
        index: sample index within the regular samples, or within the held-out samples when
            ``heldout`` is set.
        modality: ``"ct"`` or ``"dermoscopy"``.
        size: side length in pixels (>= 64).
        heldout: render a ``test_heldout`` sample (held-out attribute combinations and
            reserved paraphrases).
        prompts_per_target: number of phrasings drawn for each target.
        appearance: ``"classic"`` (the fixed-benchmark look) or ``"randomized"`` (domain
            randomisation, see `vlseg.data.phantoms.randomize`: the label maps are drawn, then
            tissue intensities / contrast phase, noise, blur, resolution, bias, artefacts,
            window, field of view and anatomy variation at random), or
            ``"randomized-contrast"`` (that, plus arbitrary tissue grey levels on a share of
            the CT images, gamma / inverted displays and skin markings in several styles).
            Randomisation draws from its own generator, so the anatomy draws of the classic
            phantom are unchanged.
    """
    _check_appearance(appearance)
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; available: {', '.join(MODALITIES)}")
    if size < 64:
        raise ValueError(f"size={size} is too small to draw anatomy; use 64 or more")
    kind = 1 if heldout else 0
    rng = np.random.default_rng([seed, index, 2, kind, MODALITIES.index(modality)])
    arng = None
    if appearance != "classic":  # both randomised looks share the draws they have in common
        arng = np.random.default_rng([seed, index, 3, kind, MODALITIES.index(modality)])
    more = appearance == "randomized-contrast"
    if modality == "ct":
        image, objects, attrs = render_ct(
            rng, size, heldout=heldout, randomize=arng, synthetic_contrast=more
        )
        targets = ct_targets(objects, rng, heldout=heldout, k=prompts_per_target)
        caption, label = ct_caption(objects)
        mm = round(float(rng.uniform(1.3, 1.7)) * 256 / size, 4)
    else:
        image, objects, attrs = render_dermoscopy(
            rng, size, heldout=heldout, randomize=arng, ink_styles=more
        )
        targets = derm_targets(objects, rng, heldout=heldout, k=prompts_per_target)
        caption, label = derm_caption(objects, attrs)
        mm = round(float(rng.uniform(0.06, 0.09)) * 256 / size, 4)
    prefix = "ct" if modality == "ct" else "derm"
    sid = f"{prefix}_h{index:05d}" if heldout else f"{prefix}_{index:06d}"
    split = "test_heldout" if heldout else split_of(seed, index)
    return PhantomSample(
        id=sid,
        modality=modality,
        image=image,
        objects=objects,
        targets=targets,
        caption=caption,
        label=label,
        spacing=(mm, mm),
        split=split,
        attrs=attrs,
    )


def _modality_of(modality: str, index: int) -> str:
    return MODALITIES[index % 2] if modality == "all" else modality


def _job(args: tuple) -> PhantomSample:
    seed, index, modality, size, heldout, k, appearance = args
    return generate_sample(
        seed=seed,
        index=index,
        modality=modality,
        size=size,
        heldout=heldout,
        prompts_per_target=k,
        appearance=appearance,
    )


def iter_samples(
    n: int,
    *,
    seed: int,
    modality: str = "all",
    size: int = 256,
    n_heldout: int = 0,
    prompts_per_target: int = 6,
    workers: int = 1,
    progress: bool = False,
    appearance: str = "classic",
) -> Iterator[PhantomSample]:
    """Yield ``n`` regular samples then ``n_heldout`` held-out samples, in a fixed order.

    ``modality="all"`` alternates CT and dermoscopy. ``workers > 1`` renders in parallel
    processes; the output is identical whatever the worker count. ``appearance`` as in
    `generate_sample`.
    """
    _check_modality(modality)
    _check_appearance(appearance)
    k = prompts_per_target
    jobs = [(seed, i, _modality_of(modality, i), size, False, k, appearance) for i in range(n)]
    jobs += [
        (seed, j, _modality_of(modality, j), size, True, k, appearance) for j in range(n_heldout)
    ]
    bar = tqdm(total=len(jobs), desc="phantoms", unit="img", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for sample in pool.map(_job, jobs, chunksize=8):
                bar.update()
                yield sample
    else:
        for job in jobs:
            bar.update()
            yield _job(job)
    bar.close()


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=False)


def _record_split(split: str, prompts: list[str]) -> str:
    """A held-out record whose prompts name the target with a word no text tower knows goes to
    ``test_unknown_words`` (see ``language.UNKNOWN_WORD_NOUNS``)."""
    if split == "test_heldout" and prompts and all(lang.uses_unknown_word(p) for p in prompts):
        return "test_unknown_words"
    return split


def sample_records(sample: PhantomSample) -> list[dict]:
    """Manifest records of a sample: one per target, paths relative to the dataset root."""
    records = []
    for t in sample.targets:
        records.append(
            {
                "id": f"{sample.id}/{t.key}",
                "image": f"images/{sample.id}.png",
                "mask": f"masks/{sample.id}__{t.key}.png" if t.positive else None,
                "prompts": t.prompts,
                "label": sample.label,
                "modality": sample.modality,
                "spacing": list(sample.spacing),
                "split": _record_split(sample.split, t.prompts),
                "positive": t.positive,
                "target": t.key,
                "caption": sample.caption,
                "sample": sample.id,
            }
        )
    return records


def write_samples(directory: Path, samples) -> None:
    """Write samples into ``directory`` in the dataset layout: ``images/``, ``masks/`` (one PNG
    per positive target) and ``manifest.jsonl`` (one record per target)."""
    (directory / "images").mkdir()
    (directory / "masks").mkdir()
    with open(directory / "manifest.jsonl", "w", encoding="utf-8") as manifest:
        for sample in samples:
            _save_png(sample.image, directory / "images" / f"{sample.id}.png")
            for t, rec in zip(sample.targets, sample_records(sample), strict=True):
                if t.positive:
                    _save_png(sample.mask(t).astype(np.uint8) * 255, directory / rec["mask"])
                manifest.write(json.dumps(rec, sort_keys=True) + "\n")


def write_dataset(
    out: str | os.PathLike,
    n: int,
    *,
    seed: int,
    modality: str = "all",
    size: int = 256,
    n_heldout: int | None = None,
    prompts_per_target: int = 6,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    appearance: str = "classic",
) -> Path:
    """Write a manifest dataset: ``images/``, ``masks/``, ``manifest.jsonl``, ``dataset.json``.

    The dataset is built in a temporary sibling directory and renamed into place at the end, so an
    interrupted run never leaves a half-written dataset at ``out``.

    Args:
        out: target directory (must not exist unless ``overwrite``).
        n: number of regular samples (split 80/10/10 into train/val/test).
        seed: dataset seed.
        modality: ``"ct"``, ``"dermoscopy"`` or ``"all"`` (alternating).
        size: image side in pixels.
        n_heldout: number of ``test_heldout`` samples; default ``max(1, n // 10)``.
        prompts_per_target: phrasings per target.
        workers: parallel rendering processes.
        progress: show a progress bar.
        overwrite: replace an existing directory.
        appearance: ``"classic"``, ``"randomized"`` or ``"randomized-contrast"`` (domain
            randomisation, see :func:`generate_sample`), recorded in ``dataset.json``.

    Returns:
        The dataset directory; its manifest is ``out / "manifest.jsonl"``.
    """
    out = Path(out)
    if n < 1:
        raise ValueError(f"n={n}: ask for at least one sample")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pick another --out or pass --overwrite")
    n_heldout = max(1, n // 10) if n_heldout is None else n_heldout
    _check_appearance(appearance)
    samples = iter_samples(
        n,
        seed=seed,
        modality=modality,
        size=size,
        n_heldout=n_heldout,
        prompts_per_target=prompts_per_target,
        workers=workers,
        progress=progress,
        appearance=appearance,
    )
    with atomic_directory(out) as tmp:
        write_samples(tmp, samples)
        meta = {
            "generator": "vlseg.data.phantoms",
            "n": n,
            "n_heldout": n_heldout,
            "seed": seed,
            "modality": modality,
            "size": size,
            "prompts_per_target": prompts_per_target,
            "appearance": appearance,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out
