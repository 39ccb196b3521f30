"""Training losses that are not a library call: ordinal, attention supervision, CenterNet focal."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention_loss", "centernet_focal_loss", "ordinal_loss"]


def ordinal_loss(dr_logits: torch.Tensor, grade: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the expected grade under the softmax and the true grade.

    Cross-entropy treats "predicted 4 for a 0" and "predicted 1 for a 0" alike; this term charges by
    distance, the same ordering QWK rewards.
    """
    levels = torch.arange(dr_logits.shape[1], dtype=dr_logits.dtype, device=dr_logits.device)
    expected = (torch.softmax(dr_logits, dim=1) * levels).sum(dim=1)
    return F.smooth_l1_loss(expected, grade.to(dr_logits.dtype))


def attention_loss(attention: torch.Tensor, guide: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """-log of the attention mass on guided cells, averaged over the rows ``use`` that have any.

    Args:
        attention: (B, h, w) softmax attention (sums to 1 per image).
        guide: (B, g, g) lesion guide in [0, 1] at any resolution; a feature cell is "lesion" when any
            guide cell inside it is (max pooling: a microaneurysm must not vanish in a 32-px cell).
        use: (B,) bool, rows that have a guide worth following.

    Minimising it raises the share of attention on lesions (the relevance mass the explanation
    benchmark scores) without fixing how it is spread among them.
    """
    region = F.adaptive_max_pool2d(guide[:, None].float(), attention.shape[-2:])[:, 0] > 0.25
    rows = use & region.flatten(1).any(dim=1)
    if not bool(rows.any()):
        return attention.sum() * 0
    mass = (attention.float() * region).flatten(1).sum(dim=1)[rows]
    return -torch.log(mass.clamp_min(1e-4)).mean()


def centernet_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2, beta: float = 4
) -> torch.Tensor:
    """Penalty-reduced focal loss on Gaussian heatmaps (CenterNet, Zhou et al. 2019)."""
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = target.ge(0.99).float()
    pos_loss = -torch.log(prob) * (1 - prob) ** alpha * positive
    neg_loss = -torch.log(1 - prob) * prob**alpha * (1 - target) ** beta * (1 - positive)
    return (pos_loss.sum() + neg_loss.sum()) / positive.sum().clamp_min(1)
