"""Datasets: procedural phantoms, manifests, image I/O and transforms."""

from vlseg.atomic import atomic_write
from vlseg.data.io import (
    LoadedImage,
    load_image,
    load_mask,
    read_image_size,
    save_mask_png,
)
from vlseg.data.manifest import (
    ManifestDataset,
    Record,
    collate,
    load_record_target,
    read_manifest,
    validate_records,
    write_manifest,
)
from vlseg.data.transforms import CLIP_MEAN, CLIP_STD, AugmentConfig, SegTransform

__all__ = [
    "LoadedImage",
    "atomic_write",
    "load_image",
    "load_mask",
    "read_image_size",
    "save_mask_png",
    "ManifestDataset",
    "Record",
    "collate",
    "load_record_target",
    "read_manifest",
    "validate_records",
    "write_manifest",
    "CLIP_MEAN",
    "CLIP_STD",
    "AugmentConfig",
    "SegTransform",
]
