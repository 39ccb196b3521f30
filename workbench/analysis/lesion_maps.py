"""From lesion probability maps to what the faces show: masks, counts, areas, one disc, counts by region.

All maps are (5, S, S) probabilities on a field-of-view crop with its ``CropTransform``; centres and
areas come out in original pixels.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from models.constants import LESION_CODES
from models.fov import FieldOfView
from models.preprocess import CropTransform
from workbench.analysis.result import LesionSummary
from workbench.anatomy import EtdrsGrid, region_of_points

__all__ = ["inside_field", "lesions_by_region", "one_disc", "summarise_lesions"]


def inside_field(probabilities: np.ndarray, transform: CropTransform, fov: FieldOfView) -> np.ndarray:
    """Probabilities with everything outside the field of view (a 2% margin in) set to 0: no lesion
    lies on the black surround or on the cut edge of the field."""
    side = probabilities.shape[-1]
    centre = transform.to_crop(np.array([[fov.cx, fov.cy]]))[0]
    ys, xs = np.mgrid[0:side, 0:side]
    inside = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= (0.98 * fov.radius * transform.scale) ** 2
    return probabilities * inside[None]


def summarise_lesions(
    probabilities: np.ndarray, transform: CropTransform, thresholds: dict[str, float]
) -> dict[str, LesionSummary]:
    """One ``LesionSummary`` per lesion type from (5, S, S) probabilities on a crop: the mask at that
    type's threshold, its connected components (count, centres in original pixels) and area."""
    area_scale = 1.0 / transform.scale**2
    out = {}
    for channel, code in enumerate(LESION_CODES):
        mask = probabilities[channel] >= thresholds[code]
        count, _, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        centres = transform.to_original(centroids[1:]) if count > 1 else np.zeros((0, 2))
        out[code] = LesionSummary(
            code,
            count - 1,
            float(mask.sum() * area_scale),
            mask,
            probabilities[channel].astype(np.float16),
            centres,
        )
    return out


def one_disc(disc: LesionSummary, chosen: np.ndarray | None, transform: CropTransform) -> LesionSummary:
    """The disc summary reduced to the one component ``place_landmarks`` chose (at most one disc)."""
    if chosen is None or not chosen.any():
        return replace(
            disc, count=0, area_px=0.0, mask=np.zeros_like(disc.mask), centroids_xy=np.zeros((0, 2))
        )
    ys, xs = np.nonzero(chosen)
    centre = transform.to_original(np.array([[xs.mean(), ys.mean()]]))
    area = float(chosen.sum() / transform.scale**2)
    return replace(disc, count=1, area_px=area, mask=chosen, centroids_xy=centre)


def lesions_by_region(grid: EtdrsGrid, lesions: dict[str, LesionSummary]) -> dict[str, dict[str, int]]:
    """Lesion counts per ETDRS region (by component centre), per lesion type; the disc is not counted."""
    table: dict[str, dict[str, int]] = {}
    for code, summary in lesions.items():
        if code == "OD" or not len(summary.centroids_xy):
            continue
        for region in region_of_points(grid, summary.centroids_xy):
            if region is not None:
                table.setdefault(region, {}).setdefault(code, 0)
                table[region][code] += 1
    return table
