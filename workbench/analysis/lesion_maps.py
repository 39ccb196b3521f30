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

__all__ = ["inside_field", "lesions_by_region", "one_disc", "one_type_per_pixel", "summarise_lesions"]


def inside_field(probabilities: np.ndarray, transform: CropTransform, fov: FieldOfView) -> np.ndarray:
    """Probabilities with everything outside the field of view (a 2% margin in) set to 0: no lesion
    lies on the black surround or on the cut edge of the field."""
    side = probabilities.shape[-1]
    centre = transform.to_crop(np.array([[fov.cx, fov.cy]]))[0]
    ys, xs = np.mgrid[0:side, 0:side]
    inside = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= (0.98 * fov.radius * transform.scale) ** 2
    return probabilities * inside[None]


def one_type_per_pixel(
    probabilities: np.ndarray, thresholds: dict[str, float], reliable: frozenset[str] = frozenset()
) -> dict[str, np.ndarray]:
    """Each lesion type's mask at its threshold, a pixel claimed by several types kept by one: a reliable
    type (``reliable``, from the card's validated AUPR) over an unreliable one, then the higher
    probability. The optic disc is anatomy, not a lesion: its mask stays as thresholded.

    IDRiD's annotators never give a pixel two lesion types (0.02% of lesion pixels, all 54 training
    images), but the segmenter's heads are independent: the low-resolution one calls ~90% of the hard
    exudates soft exudates as well. Measured on the 11 validation images (Dice at the thresholds the apps
    draw at, independent -> this rule; `drwb evaluate --task segmentation` reports them as drawn_dice_*):
    segmenter_lite0 on the fast profile's 640-px crop MA 0.018 -> 0.018, HE 0.404 -> 0.404, EX 0.472 ->
    0.468, SE (unreliable) 0.256 -> 0.202; segmenter_lite0_hr (every type reliable, so the higher
    probability decides) MA 0.445 -> 0.441, HE, EX and SE within 0.001."""
    lesion_channels = [c for c, code in enumerate(LESION_CODES) if code != "OD"]
    masks = {code: probabilities[c] >= thresholds[code] for c, code in enumerate(LESION_CODES)}
    claims = np.stack([masks[LESION_CODES[c]] for c in lesion_channels])
    contested = claims.sum(0) > 1
    if contested.any():
        rank = np.stack(
            [
                probabilities[c][contested].astype(np.float32) + (LESION_CODES[c] in reliable)
                for c in lesion_channels
            ]
        )
        rank[~claims[:, contested]] = -1.0
        winner = rank.argmax(0)
        for k, c in enumerate(lesion_channels):
            masks[LESION_CODES[c]][contested] = winner == k
    return masks


def summarise_lesions(
    probabilities: np.ndarray,
    transform: CropTransform,
    thresholds: dict[str, float],
    reliable: frozenset[str] = frozenset(),
) -> dict[str, LesionSummary]:
    """One ``LesionSummary`` per lesion type from (5, S, S) probabilities on a crop: the mask at that
    type's threshold, one type per pixel (``one_type_per_pixel``; ``reliable`` names the types whose
    validated AUPR clears the floor), its connected components (count, centres in original pixels) and
    area."""
    area_scale = 1.0 / transform.scale**2
    out = {}
    masks = one_type_per_pixel(probabilities, thresholds, reliable)
    for channel, code in enumerate(LESION_CODES):
        mask = masks[code]
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
