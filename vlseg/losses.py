"""Training losses: Dice + BCE on masks (with deep supervision), BCE on presence, CLIP loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per sample (B), logits and target B x 1 x H x W."""
    prob = torch.sigmoid(logits).flatten(1)
    tgt = target.flatten(1)
    inter = (prob * tgt).sum(1)
    return 1 - (2 * inter + eps) / (prob.sum(1) + tgt.sum(1) + eps)


def mask_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    positive: torch.Tensor,
    *,
    dice_weight: float,
    bce_weight: float,
) -> torch.Tensor:
    """Dice on positive pairs (an empty target has no overlap to score) + BCE on all pairs.

    Args:
        logits: B x 1 x h x w (resized to the target if needed).
        target: B x 1 x H x W in {0, 1}.
        positive: B float, 1 where the expression refers to something.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2, 3))
    dice = dice_loss(logits, target)
    pos = positive.float()
    dice = (dice * pos).sum() / pos.sum().clamp_min(1.0)
    return dice_weight * dice + bce_weight * bce.mean()


def clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between B image and B caption embeddings.

    ``groups`` (B long) marks pairs sharing a caption; all of them count as correct matches, so
    identical captions of different images are not pushed apart.
    """
    img = F.normalize(image_emb, dim=-1)
    txt = F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.t()
    if groups is None:
        target = torch.eye(len(img), device=img.device)
    else:
        target = (groups[:, None] == groups[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    return 0.5 * (
        torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
        + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean()
    )
