"""Evaluation metrics for segmentation, classification and retrieval.

Numpy first: every function also takes torch tensors (detached and moved to the CPU).
"""

from vlseg.metrics.classification import (
    balanced_accuracy,
    binary_auroc,
    confusion_matrix,
    macro_auroc,
    top1_accuracy,
)
from vlseg.metrics.retrieval import recall_at_k
from vlseg.metrics.segmentation import SegmentationMeter, dice, hd95, iou

__all__ = [
    "SegmentationMeter",
    "balanced_accuracy",
    "binary_auroc",
    "confusion_matrix",
    "dice",
    "hd95",
    "iou",
    "macro_auroc",
    "recall_at_k",
    "top1_accuracy",
]
