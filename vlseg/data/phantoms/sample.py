"""Data classes describing one rendered phantom and the expressions that refer into it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PhantomObject:
    """One annotated object of a phantom.

    Attributes:
        name: unique within the sample, e.g. ``"liver"`` or ``"hepatic_lesion_1"``.
        category: object class, e.g. ``"hepatic_lesion"``, ``"kidney"``, ``"skin_lesion"``.
        mask: HxW bool, exactly the pixels the renderer painted for this object.
        attrs: descriptive attributes (density, lobe, side, size, lesion class, ...).
    """

    name: str
    category: str
    mask: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    """A group of objects that a set of referring expressions points at.

    Attributes:
        key: short identifier, unique within the sample (``"liver"``, ``"lesions_right_lobe"``).
        objects: names of the referred objects; empty for a negative (absent) target.
        prompts: referring expressions, all meaning the same target.
    """

    key: str
    objects: tuple[str, ...]
    prompts: list[str]

    @property
    def positive(self) -> bool:
        return bool(self.objects)


@dataclass
class PhantomSample:
    """A rendered phantom with its annotations.

    Attributes:
        id: stable identifier, e.g. ``"ct_000012"``.
        modality: ``"ct"`` or ``"dermoscopy"``.
        image: HxW uint8 (CT, windowed) or HxWx3 uint8 (dermoscopy).
        objects: annotated objects.
        targets: referring-expression targets (positive and negative).
        caption: an image-level description of the visible findings.
        label: image-level class label.
        spacing: pixel spacing in mm as (row, col).
        split: ``train``, ``val``, ``test`` or ``test_heldout``.
        attrs: image-level attributes (scanner profile, skin tone, ...).
    """

    id: str
    modality: str
    image: np.ndarray
    objects: list[PhantomObject]
    targets: list[Target]
    caption: str
    label: str
    spacing: tuple[float, float]
    split: str
    attrs: dict[str, Any] = field(default_factory=dict)

    def object(self, name: str) -> PhantomObject:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(
            f"no object {name!r} in {self.id}; available: {[o.name for o in self.objects]}"
        )

    def mask(self, target: Target | str) -> np.ndarray:
        """Union mask (HxW bool) of a target's objects; all False for a negative target."""
        if isinstance(target, str):
            found = [t for t in self.targets if t.key == target]
            if not found:
                keys = [t.key for t in self.targets]
                raise KeyError(f"no target {target!r} in {self.id}; available: {keys}")
            target = found[0]
        out = np.zeros(self.image.shape[:2], dtype=bool)
        for name in target.objects:
            out |= self.object(name).mask
        return out
