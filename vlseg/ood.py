"""Image-level out-of-domain score: how unlike the training images an image is.

The score is the Mahalanobis distance of the image's features (the L2-normalised global
averages of the encoder's multi-scale maps, ``EncodedImage.pooled``) from a Gaussian fitted to
the training images' features (Lee et al., 2018, "A simple unified
framework for detecting out-of-distribution samples"), with the covariance shrunk towards its
diagonal so that it stays invertible for a few hundred images in a few hundred dimensions. The
fit lives next to the weights as ``ood.safetensors``; the threshold that flags an image
(``serving.ood_threshold``) is chosen on in-distribution validation images by ``vlseg
calibrate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_write

OOD_FILE = "ood.safetensors"


@dataclass
class OODDetector:
    """A Gaussian over training-image features.

    Attributes:
        mean: (E,) float64 mean feature vector.
        precision: (E, E) float64 inverse of the shrunk covariance.
    """

    mean: np.ndarray
    precision: np.ndarray

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Mahalanobis distances, (N,) float64, of N x E features."""
        x = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"features have {x.shape[1]} dimensions, the OOD fit {self.mean.shape[0]}: "
                "was it fitted with another model? Refit it with vlseg calibrate"
            )
        d = x - self.mean
        return np.sqrt(np.maximum(np.einsum("ne,ef,nf->n", d, self.precision, d), 0.0))

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / OOD_FILE
        tensors = {
            "mean": torch.from_numpy(self.mean.copy()),
            "precision": torch.from_numpy(self.precision.copy()),
        }
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "vlseg-ood"})
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> OODDetector | None:
        """The fit saved in a checkpoint directory, or None when it has none."""
        path = Path(directory) / OOD_FILE
        if not path.is_file():
            return None
        t = load_file(str(path))
        return cls(t["mean"].numpy(), t["precision"].numpy())


def fit_ood(embeddings: np.ndarray, *, shrinkage: float = 0.1) -> OODDetector:
    """Fit the Gaussian to N x E training-image features.

    Args:
        shrinkage: in [0, 1); the covariance is ``(1 - s) * C + s * diag(C)`` (plus a tiny
            ridge), which keeps it invertible when N is not much larger than E.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need an N x E array with N >= 2 embeddings, got shape {x.shape}")
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"shrinkage must be in [0, 1), got {shrinkage}")
    mean = x.mean(0)
    cov = np.cov(x - mean, rowvar=False)
    diag = np.diag(np.diag(cov))
    cov = (1.0 - shrinkage) * cov + shrinkage * diag
    cov += 1e-6 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return OODDetector(mean, np.linalg.inv(cov))
