"""Image/mask transforms that keep the two aligned: resize, normalise, train-time augmentation.

Every geometric operation is computed once and applied to the image and the mask together, and the
mask is resampled on the same pixel-centre grid as the image (bilinear + threshold at 0.5), so a
structure in the image stays under its mask. Images are resized straight to the model size (no
crop), so predictions map back to the original size by one resize.

There is deliberately no horizontal (or vertical) flip: referring expressions say "left kidney"
and "right lobe", and a flip would make the text wrong.

Tensors: images are ``3xHxW`` float32 (``[0, 1]`` before :func:`normalize`), masks ``1xHxW``
float32 in ``{0, 1}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "AugmentConfig",
    "SegTransform",
    "denormalize",
    "image_to_tensor",
    "mask_to_tensor",
    "normalize",
    "random_geometric",
    "random_intensity",
    "resize_image",
    "resize_mask",
]

# OpenAI CLIP / open_clip defaults; checkpoints that ship their own travel with the weights.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random train-time augmentation (no flips, see the module docstring)."""

    scale: tuple[float, float] = (0.85, 1.2)  # zoom factor; > 1 zooms in (crops)
    max_rotation: float = 10.0  # degrees, uniform in [-max, max]
    max_translate: float = 0.05  # fraction of the image size, per axis
    p_geometric: float = 0.8  # probability of applying the affine at all
    brightness: float = 0.1  # additive shift in [-b, b] on the [0, 1] scale
    contrast: float = 0.15  # multiplier in [1 - c, 1 + c] around the image mean
    gamma: tuple[float, float] = (0.8, 1.25)  # exponent range; 1 = unchanged
    noise_std: float = 0.02  # gaussian noise std drawn uniformly from [0, noise_std]
    # Probability of inverting a grey-scale image (a CT shown with the other polarity: a
    # MONOCHROME1 export, a wrong look-up table). Colour images are never inverted.
    invert_grey: float = 0.0

    @classmethod
    def from_mapping(cls, data: dict) -> AugmentConfig:
        """Ranges from a config mapping (``augment: {gamma: [0.5, 2.0], invert_grey: 0.2}``);
        keys not given keep their defaults, unknown keys are named."""
        from ..config import from_dict

        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        cfg = from_dict(cls, data, where="augment")
        if not 0.0 <= cfg.invert_grey <= 1.0 or cfg.gamma[0] <= 0 or cfg.gamma[0] > cfg.gamma[1]:
            raise ValueError(
                f"augment: invert_grey must be in [0, 1] and gamma a range (low, high) with "
                f"0 < low <= high, got invert_grey={cfg.invert_grey}, gamma={cfg.gamma}"
            )
        return cfg


def image_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``HxWx3`` uint8 numpy -> ``3xHxW`` float32 tensor in ``[0, 1]``."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {rgb.dtype} {rgb.shape}")
    return (
        torch.from_numpy(np.require(rgb, requirements=["C", "W"]))
        .permute(2, 0, 1)
        .float()
        .div_(255.0)
    )


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """``HxW`` bool numpy -> ``1xHxW`` float32 tensor in ``{0, 1}``."""
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {mask.shape}")
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)).float()[None]


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        h = w = size
    else:
        if len(size) != 2:
            raise ValueError(f"image_size must be an int or (H, W), got {size!r}")
        h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {size!r}")
    return h, w


def resize_image(image: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize a ``CxHxW`` image in ``[0, 1]`` with antialiased bicubic; output clamped to [0, 1]."""
    h, w = _size2(size)
    if tuple(image.shape[-2:]) == (h, w):
        return image
    out = F.interpolate(
        image[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True
    )
    return out[0].clamp_(0.0, 1.0)


def resize_mask(mask: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize a ``1xHxW`` {0, 1} mask on the image's sampling grid, then threshold at 0.5.

    Antialiased bilinear + threshold puts the boundary where the image's boundary goes (nearest
    neighbour can shift it by up to half an input pixel); structures much smaller than one output
    pixel may vanish.
    """
    h, w = _size2(size)
    if tuple(mask.shape[-2:]) == (h, w):
        return mask
    soft = F.interpolate(
        mask[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True
    )
    return (soft[0] >= 0.5).float()


def normalize(
    image: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """``(image - mean) / std`` per channel for a ``3xHxW`` (or ``Bx3xHxW``) tensor."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image - m) / s


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """Inverse of :func:`normalize` (for display), clamped to ``[0, 1]``."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image * s + m).clamp(0.0, 1.0)


def random_geometric(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    rng: np.random.Generator,
    cfg: AugmentConfig = AugmentConfig(),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply one random zoom/rotation/translation to a ``3xHxW`` image and its ``1xHxW`` mask.

    Both are sampled on the same grid (image bilinear, mask bilinear + threshold 0.5); pixels
    coming from outside the image are 0. If the transform would push all of a non-empty mask out
    of view, the inputs are returned unchanged so a positive sample stays positive.
    """
    if rng.random() >= cfg.p_geometric:
        return image, mask
    h, w = image.shape[-2:]
    zoom = float(rng.uniform(*cfg.scale))
    angle = math.radians(float(rng.uniform(-cfg.max_rotation, cfg.max_rotation)))
    tx, ty = (float(v) * 2.0 for v in rng.uniform(-cfg.max_translate, cfg.max_translate, size=2))
    cos, sin = math.cos(angle), math.sin(angle)
    # theta maps output to input in normalised [-1, 1] coordinates; the H/W factors make the
    # rotation rigid in pixels for non-square images.
    theta = torch.tensor(
        [[cos / zoom, -sin * h / w / zoom, tx], [sin * w / h / zoom, cos / zoom, ty]],
        dtype=image.dtype,
    )[None]
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    out = F.grid_sample(image[None], grid, mode="bilinear", align_corners=False)[0]
    if mask is None:
        return out.clamp_(0.0, 1.0), None
    soft = F.grid_sample(mask[None], grid, mode="bilinear", align_corners=False)[0]
    out_mask = (soft >= 0.5).float()
    if mask.any() and not out_mask.any():
        return image, mask
    return out.clamp_(0.0, 1.0), out_mask


def random_intensity(
    image: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()
) -> torch.Tensor:
    """Random brightness, contrast, gamma and gaussian noise on a ``3xHxW`` image in [0, 1]."""
    out = image + float(rng.uniform(-cfg.brightness, cfg.brightness))
    mean = out.mean()
    out = (out - mean) * float(rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast)) + mean
    out = out.clamp(0.0, 1.0).pow(float(rng.uniform(*cfg.gamma)))
    std = float(rng.uniform(0.0, cfg.noise_std))
    if std > 0:
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        out = out + torch.randn(out.shape, generator=gen, dtype=out.dtype) * std
    out = out.clamp_(0.0, 1.0)
    # Drawn only when enabled, so the default ranges give the same augmentation as before.
    if cfg.invert_grey > 0 and rng.random() < cfg.invert_grey and _is_grey(image):
        out = 1.0 - out
    return out


def _is_grey(image: torch.Tensor) -> bool:
    """A 3xHxW image whose channels are equal (a CT slice as RGB)."""
    return bool(torch.equal(image[0], image[1]) and torch.equal(image[1], image[2]))


class SegTransform:
    """uint8 image + bool mask -> normalised ``3xHxW`` image and ``1xHxW`` mask at model size.

    Example:
        >>> t = SegTransform(224, augment=True)
        >>> image, mask = t(rgb, mask_bool, rng=np.random.default_rng(0))  # doctest: +SKIP

    Args:
        image_size: output size, an int or ``(H, W)``.
        mean: per-channel normalisation mean (image in [0, 1]).
        std: per-channel normalisation std.
        augment: False, True (default ranges), an :class:`AugmentConfig` or a mapping of its
            fields (the ``augment`` key of a training config).
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        *,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        augment: bool | AugmentConfig | dict = False,
    ) -> None:
        self.size = _size2(image_size)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values with std > 0, got {mean!r}, {std!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if augment is True:
            augment = AugmentConfig()
        elif isinstance(augment, dict):
            augment = AugmentConfig.from_mapping(augment)
        self.augment: AugmentConfig | None = augment or None

    def __call__(
        self,
        rgb: np.ndarray,
        mask: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transform one pair.

        Args:
            rgb: ``HxWx3`` uint8.
            mask: ``HxW`` bool of the same size, or None.
            rng: random source for augmentation (required for determinism; default a fresh one).

        Returns:
            ``(image 3xhxw float32 normalised, mask 1xhxw float32 in {0, 1} or None)``.
        """
        image = resize_image(image_to_tensor(rgb), self.size)
        target = None
        if mask is not None:
            if mask.shape != rgb.shape[:2]:
                raise ValueError(
                    f"mask shape {mask.shape} differs from image shape {rgb.shape[:2]}"
                )
            target = resize_mask(mask_to_tensor(mask), self.size)
        if self.augment is not None:
            rng = rng if rng is not None else np.random.default_rng()
            image, target = random_geometric(image, target, rng, self.augment)
            image = random_intensity(image, rng, self.augment)
        return normalize(image, self.mean, self.std), target

    def __repr__(self) -> str:
        return f"SegTransform(size={self.size}, augment={self.augment})"
