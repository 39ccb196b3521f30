"""Score an analysis's explanations: faithfulness and lesion localisation, per method.

Lesion masks are the ground truth when the caller has them (an IDRiD segmentation image), else the
segmenter's own masks; either way they are brought to the explainer's input frame first.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.preprocess import CropTransform
from workbench.explainers import ExplainableModel, Heatmap
from workbench.explanation_quality import (
    Curves,
    deletion_insertion,
    pointing_game,
    relevance_mass,
    relevance_rank,
)
from workbench.targets import Target

__all__ = ["ExplanationScore", "lesion_union_in_input", "original_masks_to_crop", "score_heatmap"]

LOCALISED_LESIONS = ("MA", "HE", "EX", "SE")


@dataclass(frozen=True)
class ExplanationScore:
    method: str
    seconds: float
    deletion_auc: float
    insertion_auc: float
    pointing_game: bool | None
    relevance_mass: float | None
    relevance_rank: float | None
    curves: Curves

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "curves"}


def lesion_union_in_input(masks: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Union of the MA/HE/EX/SE masks (any square frame) resized to (size, size) boolean."""
    union = None
    for code in LOCALISED_LESIONS:
        if code in masks:
            mask = cv2.resize(masks[code].astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA) > 0
            union = mask if union is None else union | mask
    return union if union is not None else np.zeros((size, size), bool)


def original_masks_to_crop(masks: dict[str, np.ndarray], transform: CropTransform) -> dict[str, np.ndarray]:
    """Ground-truth masks in the original frame -> the crop frame (area fraction > 0)."""
    return {code: transform.warp_to_crop(mask) > 0 for code, mask in masks.items()}


def score_heatmap(
    model: ExplainableModel, image, heatmap: Heatmap, target: Target, lesion_mask: np.ndarray, steps: int = 16
) -> ExplanationScore:
    """Deletion/insertion AUC on the model, and pointing game / relevance mass / rank on ``lesion_mask``."""
    curves = deletion_insertion(model, image, heatmap.values, target, steps)
    positive = heatmap.positive()
    return ExplanationScore(
        method=heatmap.method,
        seconds=heatmap.seconds,
        deletion_auc=curves.deletion_auc,
        insertion_auc=curves.insertion_auc,
        pointing_game=pointing_game(positive, lesion_mask),
        relevance_mass=relevance_mass(positive, lesion_mask),
        relevance_rank=relevance_rank(positive, lesion_mask),
        curves=curves,
    )
