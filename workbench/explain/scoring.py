"""Score an analysis's explanations: faithfulness and lesion localisation, per method.

Lesion masks are the ground truth when the caller has them (an IDRiD segmentation image), else the
segmenter's own masks; either way they are brought to the explainer's input frame first, keeping area:
masks travel as area fractions through every resampling and are thresholded once, at half a pixel
(``fraction >= 0.5``), so a lesion covers as many input pixels as its true area (the old "any overlap"
rule, applied twice, grew lesion area 1.1-1.5x and microaneurysms 1.6-2x).

The pointing-game tolerance is stated in original pixels of a 4288-px-wide photograph (the IDRiD
challenge frame), ``POINTING_TOLERANCE_PX``, and converted to input pixels per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.preprocess import CropTransform
from workbench.explain.explainers import ExplainableModel, Heatmap
from workbench.explain.explanation_quality import (
    Curves,
    deletion_insertion,
    has_evidence,
    pointing_game,
    relevance_mass,
    relevance_rank,
)
from workbench.explain.notes import POINTING_TOLERANCE_PX
from workbench.metrics import ChallengeFrame
from workbench.targets import Target

__all__ = [
    "POINTING_TOLERANCE_PX",
    "ExplanationScore",
    "lesion_union_in_input",
    "original_masks_to_crop",
    "pointing_tolerance",
    "score_heatmap",
]

LOCALISED_LESIONS = ("MA", "HE", "EX", "SE")


@dataclass(frozen=True)
class ExplanationScore:
    """Scores of one heatmap. ``evidence`` is False for a map with no positive value; its localisation
    scores are then None ("no evidence"), as they are when the image has no lesion."""

    method: str
    seconds: float
    deletion_auc: float
    insertion_auc: float
    pointing_game: float | None
    relevance_mass: float | None
    relevance_rank: float | None
    evidence: bool
    curves: Curves

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "curves"}


def lesion_union_in_input(masks: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Union of the MA/HE/EX/SE masks (one square frame; boolean or area fractions) at (size, size).

    The union is taken at the masks' own resolution, resized with area averaging, and thresholded at
    0.5 once, which preserves lesion area.
    """
    union = None
    for code in LOCALISED_LESIONS:
        if code in masks:
            mask = np.asarray(masks[code], np.float32)
            union = mask if union is None else np.maximum(union, mask)
    if union is None:
        return np.zeros((size, size), bool)
    return cv2.resize(union, (size, size), interpolation=cv2.INTER_AREA) >= 0.5


def original_masks_to_crop(masks: dict[str, np.ndarray], transform: CropTransform) -> dict[str, np.ndarray]:
    """Ground-truth masks in the original frame -> area fractions (float32, [0, 1]) in the crop frame."""
    return {
        code: transform.warp_to_crop(np.asarray(mask, bool)).astype(np.float32)
        for code, mask in masks.items()
    }


def pointing_tolerance(transform: CropTransform, input_size: int) -> float:
    """``POINTING_TOLERANCE_PX`` (4288-px frame) in input pixels for an image with ``transform``."""
    original_px = POINTING_TOLERANCE_PX * transform.original_size[1] / ChallengeFrame
    return original_px * transform.scale * input_size / transform.size


def score_heatmap(
    model: ExplainableModel,
    image,
    heatmap: Heatmap,
    target: Target,
    lesion_mask: np.ndarray,
    steps: int = 16,
    tolerance: float = 0.0,
) -> ExplanationScore:
    """Deletion/insertion AUC on ``model``, and pointing game (disc of ``tolerance`` input px) / relevance
    mass / rank on ``lesion_mask`` (boolean, input frame)."""
    curves = deletion_insertion(model, image, heatmap.values, target, steps)
    positive = heatmap.positive()
    return ExplanationScore(
        method=heatmap.method,
        seconds=heatmap.seconds,
        deletion_auc=curves.deletion_auc,
        insertion_auc=curves.insertion_auc,
        pointing_game=pointing_game(positive, lesion_mask, tolerance),
        relevance_mass=relevance_mass(positive, lesion_mask),
        relevance_rank=relevance_rank(positive, lesion_mask),
        evidence=has_evidence(positive),
        curves=curves,
    )
