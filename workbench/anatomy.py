"""Retinal geometry from the landmarks: ETDRS grid, the IDRiD DME rule and lesions per ETDRS region.

Scale comes from the optic disc, whose diameter is about 1.8 mm in adults: pixels per mm = disc diameter
in pixels / 1.8. The ETDRS grid is centred on the fovea with radii 0.5, 1.5 and 3.0 mm; its inner and
outer rings are split into superior / nasal / inferior / temporal quadrants, nasal being the side of the
optic disc. The DME rule is IDRiD's: hard exudates within one disc diameter of the fovea = 2, anywhere
else = 1, none = 0. Computing it from the segmenter and localizer gives a second opinion, beside the
grader's DME head, that an analyst can check by eye.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DISC_DIAMETER_MM",
    "DmeRuleCheck",
    "EtdrsGrid",
    "dme_rule",
    "etdrs_grid",
    "region_of_points",
]

DISC_DIAMETER_MM = 1.8
ETDRS_RADII_MM = (0.5, 1.5, 3.0)
REGIONS = ("centre",) + tuple(
    f"{ring}_{q}" for ring in ("inner", "outer") for q in ("superior", "nasal", "inferior", "temporal")
)


@dataclass(frozen=True)
class EtdrsGrid:
    """ETDRS grid in original pixels: centre (fovea), three radii, and which side is nasal."""

    centre_xy: tuple[float, float]
    radii_px: tuple[float, float, float]
    px_per_mm: float
    nasal_sign: int  # +1 when the optic disc is to the right of the fovea (x increases nasally)


def etdrs_grid(fovea_xy: tuple[float, float], od_xy: tuple[float, float], od_radius_px: float) -> EtdrsGrid:
    """Grid around the fovea, scaled so that the disc diameter is 1.8 mm."""
    px_per_mm = 2 * od_radius_px / DISC_DIAMETER_MM
    nasal = 1 if od_xy[0] >= fovea_xy[0] else -1
    radii = tuple(float(r * px_per_mm) for r in ETDRS_RADII_MM)
    return EtdrsGrid((float(fovea_xy[0]), float(fovea_xy[1])), radii, float(px_per_mm), nasal)


def region_of_points(grid: EtdrsGrid, points_xy: np.ndarray) -> list[str | None]:
    """ETDRS region name of each (x, y) point; None outside the 6-mm grid."""
    pts = np.asarray(points_xy, float).reshape(-1, 2)
    dx, dy = pts[:, 0] - grid.centre_xy[0], pts[:, 1] - grid.centre_xy[1]
    distance = np.hypot(dx, dy)
    out: list[str | None] = []
    for ddx, ddy, d in zip(dx, dy, distance, strict=True):
        if d <= grid.radii_px[0]:
            out.append("centre")
            continue
        if d > grid.radii_px[2]:
            out.append(None)
            continue
        ring = "inner" if d <= grid.radii_px[1] else "outer"
        if abs(ddy) >= abs(ddx):
            quadrant = "superior" if ddy < 0 else "inferior"
        else:
            quadrant = "nasal" if np.sign(ddx) == grid.nasal_sign else "temporal"
        out.append(f"{ring}_{quadrant}")
    return out


@dataclass(frozen=True)
class DmeRuleCheck:
    """DME risk by the IDRiD rule from segmented exudates, and whether the grader agrees.

    Attributes:
        grade: 0, 1 or 2 by the rule.
        nearest_exudate_dd: distance of the closest exudate pixel to the fovea, in disc diameters (None
            when no exudate was found).
        grader_grade: the grader's DME prediction.
        agrees: rule grade == grader grade.
    """

    grade: int
    nearest_exudate_dd: float | None
    grader_grade: int
    agrees: bool


def dme_rule(
    exudate_xy: np.ndarray, fovea_xy: tuple[float, float], od_radius_px: float, grader_grade: int
) -> DmeRuleCheck:
    """Apply the IDRiD DME rule to exudate pixel coordinates (N, 2) in original pixels."""
    points = np.asarray(exudate_xy, float).reshape(-1, 2)
    if points.size == 0:
        grade, nearest = 0, None
    else:
        nearest = float(np.hypot(*(points - np.asarray(fovea_xy)).T).min() / (2 * od_radius_px))
        grade = 2 if nearest <= 1.0 else 1
    return DmeRuleCheck(grade, nearest, int(grader_grade), grade == int(grader_grade))
