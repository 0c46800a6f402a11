"""The torch side of a manifest: :class:`ManifestDataset`, :func:`collate` and the evaluation
target of a record (:func:`load_record_target`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vlseg.data.io import load_image, load_mask, read_image_size
from vlseg.data.manifest.formats import read_manifest
from vlseg.data.manifest.records import KNOWN_SPLITS, Record
from vlseg.data.manifest.validation import validate_records
from vlseg.data.medical_io import check_window
from vlseg.data.transforms import CLIP_MEAN, CLIP_STD, AugmentConfig, SegTransform

__all__ = ["PROMPT_MODES", "ManifestDataset", "collate", "load_record_target"]

PROMPT_MODES = ("random", "first", "all")


def load_record_target(record: Record, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """The ground truth of a record as the model should be scored on it.

    The mask is read at the image's original resolution and, for a NIfTI volume or a
    multi-frame DICOM, at the record's ``slice`` (the middle one when the record names none:
    the same slice :class:`ManifestDataset` and :func:`vlseg.data.io.load_image` read).

    Args:
        record: the record; a negative (``mask`` None) has an all-False target.
        size: the image's ``(H, W)`` when the caller already knows it (saves reading the
            image header); checked against the mask.

    Returns:
        ``HxW`` bool array, True on the referred structure.

    Raises:
        FileNotFoundError: the mask (or, for a negative without ``size``, the image) is missing.
        ValueError: the mask is not binary, or its size differs from the image's.
    """
    if size is None:
        size = read_image_size(record.image)
    size = (int(size[0]), int(size[1]))
    if record.mask is None:
        return np.zeros(size, dtype=bool)
    mask = load_mask(record.mask, slice_index=record.slice_index)
    if mask.shape != size:
        raise ValueError(f"{record.where()}: mask size {mask.shape} differs from image size {size}")
    return mask


class ManifestDataset(Dataset):
    """Referring segmentation samples from a manifest, resized and normalised for the model.

    Items are dicts: ``image`` float32 ``3xHxW`` normalised; ``mask`` float32 ``1xHxW`` in
    {0, 1} (all zero for negatives); ``text`` str; ``positive`` float32 scalar tensor; ``index``
    int (dataset index); ``id`` str; ``label`` str; ``modality`` str; ``orig_size`` ``(H, W)``
    of the file; ``spacing`` ``(row_mm, col_mm)`` or None. Batch them with :func:`collate`.

    Args:
        source: a manifest path or dataset directory (see :func:`read_manifest`), or records.
        split: keep only this split.
        image_size: model input size, an int or ``(H, W)``.
        mean: normalisation mean.
        std: normalisation std.
        prompt: which expression each item uses: ``"random"`` (one per ``__getitem__``,
            reproducible from ``seed``, :meth:`set_epoch` and the index), ``"first"``, ``"all"``
            (one item per (record, expression) pair, for evaluation), an int (that position in
            every record), or a prompt key such as ``"p3"`` (medvlsm; random among its values).
        augment: train-time augmentation: False, True, an :class:`AugmentConfig` or a mapping
            of its fields.
        seed: base seed for prompt choice and augmentation.
        validate: run :func:`validate_records` (with file checks) before use.
        window: the model's CT window ``(level, width)`` in HU, passed to
            :func:`vlseg.data.io.load_image` (DICOM CT and NIfTI images are windowed with it);
            None reads each file's own window, as before.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[Record],
        split: str | None = None,
        *,
        image_size: int | tuple[int, int] = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        prompt: str | int = "random",
        augment: bool | AugmentConfig | dict = False,
        seed: int = 0,
        validate: bool = True,
        window: tuple[float, float] | None = None,
    ) -> None:
        if isinstance(source, (str, os.PathLike)):
            records = read_manifest(source, split)
        else:
            records = [r for r in source if split is None or r.split == split]
        if not records:
            raise ValueError(f"no records{f' for split {split!r}' if split else ''} in {source!r}")
        if validate:
            splits = tuple(KNOWN_SPLITS) + ((split,) if split else ())
            validate_records(records, check_files=True, splits=splits)
        self.records = records
        self.prompt = prompt
        self.seed = int(seed)
        self.window = None if window is None else check_window(window)
        # In shared memory so that set_epoch also reaches persistent DataLoader workers.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.transform = SegTransform(image_size, mean=mean, std=std, augment=augment)
        self._items = self._index_items(records, prompt)

    @staticmethod
    def _index_items(records: list[Record], prompt: str | int) -> list[tuple[int, list[int]]]:
        """(record index, candidate prompt positions) per item."""
        items: list[tuple[int, list[int]]] = []
        missing: list[str] = []
        for i, r in enumerate(records):
            n = len(r.prompts)
            if isinstance(prompt, bool) or not isinstance(prompt, (str, int)):
                raise TypeError(f"prompt must be a str or int, got {type(prompt).__name__}")
            if prompt == "all":
                items += [(i, [j]) for j in range(n)]
                continue
            if prompt == "random":
                candidates = list(range(n))
            elif prompt == "first":
                candidates = [0] if n else []
            elif isinstance(prompt, int):
                candidates = [prompt] if -n <= prompt < n else []
            else:
                candidates = [j for j, k in enumerate(r.prompt_keys) if k == prompt]
            if not candidates:
                missing.append(r.where())
            items.append((i, candidates))
        if missing:
            keys = sorted({k for r in records for k in r.prompt_keys})
            raise ValueError(
                f"prompt={prompt!r} selects no expression in {len(missing)} record(s), e.g. "
                f"{missing[:3]}; use one of {list(PROMPT_MODES)}, an index, or a key in {keys}"
            )
        return items

    def set_epoch(self, epoch: int) -> None:
        """Change the random prompt choice and augmentation for a new epoch (reproducibly).

        Call it before iterating the DataLoader for that epoch; the value lives in shared memory,
        so DataLoader workers (persistent ones too) see it.
        """
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        """The epoch last given to :meth:`set_epoch` (0 at first)."""
        return int(self._epoch)

    def record_for(self, index: int) -> Record:
        """The record behind dataset item ``index`` (e.g. to read its caption or full mask)."""
        return self.records[self._items[index][0]]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        rec_idx, candidates = self._items[index]
        r = self.records[rec_idx]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        pick = (
            candidates[int(rng.integers(len(candidates)))] if len(candidates) > 1 else candidates[0]
        )
        loaded = load_image(r.image, slice_index=r.slice_index, window=self.window)
        mask = load_record_target(r, size=loaded.size)  # same slice as the image
        image, target = self.transform(loaded.rgb, mask, rng)
        return {
            "image": image,
            "mask": target,
            "text": r.prompts[pick],
            "positive": torch.tensor(float(r.positive), dtype=torch.float32),
            "index": index,
            "id": r.id,
            "label": r.label,
            "modality": r.modality,
            "orig_size": loaded.size,
            "spacing": r.spacing if r.spacing is not None else loaded.spacing,
        }

    def __repr__(self) -> str:
        return (
            f"ManifestDataset({len(self.records)} records, {len(self)} items, "
            f"prompt={self.prompt!r}, {self.transform})"
        )


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (``image`` Bx3xHxW, ``mask`` Bx1xHxW, ``positive`` B); everything else
    (strings, ints, sizes, spacings that may be None) becomes a list."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if all(isinstance(v, torch.Tensor) for v in values):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
