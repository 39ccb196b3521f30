"""Image-quality verdict: is this a gradeable colour fundus photograph?

A screening tool must refuse to grade what it cannot see: a holiday photo, a blank frame, an image out of
focus. The checks run on the 512-px field-of-view crop the models use (a few milliseconds) and each
failing check contributes a reason a person can act on. Thresholds were calibrated on IDRiD: every
training image passes (lowest focus 8.3, lowest contrast 4.7), while a Gaussian blur of sigma 2 px at
512 px fails the focus check (highest 3.3). See ``tests/workbench/test_quality.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from models.fov import FieldOfView, fov_mask

__all__ = [
    "ELONGATED",
    "MEASURE_LIMITS",
    "NOT_A_FUNDUS",
    "QualityReport",
    "QualityThresholds",
    "assess_quality",
    "forced_grade_warning",
    "measure_rows",
]

_MEASURE_SIDE = 512

NO_FIELD = "no fundus field found: expected a bright circular field on a dark background"
NOT_FUNDUS_COLOURS = "colours are not those of a colour fundus photograph (red channel not dominant)"
GRAYSCALE = (
    "a grayscale picture (its three channels are equal): the grader reads colour fundus photographs; "
    "a red-free or monochrome photograph is not graded"
)
ELONGATED = (
    "not shaped like a fundus photograph: one side is more than 2.5 times the other (fundus cameras give "
    "about 1:1 to 16:9)"
)
# reasons that say the picture is not a fundus photograph
NOT_A_FUNDUS = (NO_FIELD, NOT_FUNDUS_COLOURS, ELONGATED)


def forced_grade_warning(reasons: Sequence[str]) -> str:
    """The line that heads a grade given to a photograph that failed the quality check (on a user's
    request, or in the Dataset browser, which grades every photograph); harder when the check found no
    fundus at all (a grade of such a picture is the network's output on something it never saw)."""
    failed = "; ".join(reasons)
    if any(reason in NOT_A_FUNDUS for reason in reasons):
        return (
            f"NOT A FUNDUS PHOTOGRAPH? The quality check failed ({failed}) and it was graded anyway: the "
            "grade below is the grader's output on a picture unlike any it was trained or validated on, "
            "not a finding"
        )
    return (
        f"NOT GRADEABLE ({failed}), graded anyway: the grade below was not validated on such photographs "
        "and may be wrong"
    )


@dataclass(frozen=True)
class QualityThresholds:
    """Limits of a gradeable image. Luminance values are 0-255; focus is a variance of the Laplacian."""

    min_fov_area: float = 0.15
    min_fill_ratio: float = 0.6
    min_mean_luminance: float = 25.0
    max_overexposed_fraction: float = 0.20
    min_contrast: float = 3.0
    min_focus: float = 5.0
    min_red_dominance: float = 1.05
    # mean spread between the brightest and darkest channel of a pixel (0-255); a grayscale file has 0
    min_colour_spread: float = 2.0
    # longer side over shorter side: a strip or a banner is no fundus photograph (IDRiD's are 1.5)
    max_aspect_ratio: float = 2.5
    # across the field of view, in the original image's pixels: below this a photograph is a thumbnail
    # (the grader reads 448 px; a microaneurysm is 10-25 px across in a 4288-px IDRiD photograph)
    min_fov_diameter_px: float = 256.0


@dataclass(frozen=True)
class QualityReport:
    """The verdict and the measurements behind it.

    Attributes:
        gradeable: True when no check failed.
        reasons: one sentence per failed check, empty when gradeable.
        measures: the raw values (fov_area, fill_ratio, fov_diameter_px, mean_luminance,
            overexposed_fraction, contrast, focus, red_dominance) so a QA analyst can see how close to a
            limit an image is.
    """

    gradeable: bool
    reasons: tuple[str, ...]
    measures: dict[str, float] = field(default_factory=dict)


def _measures(crop: np.ndarray, fov_in_crop: FieldOfView) -> dict[str, float]:
    # Measured at a fixed 512 px so that the focus value does not depend on the crop size.
    side = _MEASURE_SIDE
    small = crop if crop.shape[0] == side else cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    scale = small.shape[0] / crop.shape[0]
    inside = fov_mask(
        small.shape[:2],
        FieldOfView(
            (fov_in_crop.cx + 0.5) * scale - 0.5,
            (fov_in_crop.cy + 0.5) * scale - 0.5,
            fov_in_crop.radius * scale * 0.9,  # stay off the rim, whose edge is not anatomy
            0,
            0,
            True,
        ),
    )
    # Fields cut at top and bottom (IDRiD's camera) have straight edges inside the circle: keep away.
    lit = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) > 15
    inside &= cv2.erode(lit.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
    if not inside.any():  # a field too thin to erode (a strip): its lit pixels, not the black padding
        inside = lit if lit.any() else np.ones(small.shape[:2], dtype=bool)
    luminance = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    green = small[..., 1].astype(np.float32)
    lum_in = luminance[inside]
    laplacian = cv2.Laplacian(green, cv2.CV_32F)
    channel_means = small[inside].reshape(-1, 3).mean(axis=0)
    return {
        "mean_luminance": float(lum_in.mean()),
        "overexposed_fraction": float((lum_in >= 250).mean()),
        "contrast": float(green[inside].std()),
        "focus": float(laplacian[inside].var()),
        "red_dominance": float(channel_means[0] / max(1.0, channel_means[1:].max())),
        "colour_spread": float(np.ptp(small[inside].reshape(-1, 3).astype(np.int16), axis=1).mean()),
    }


def assess_quality(
    crop: np.ndarray,
    fov: FieldOfView,
    fov_in_crop: FieldOfView,
    thresholds: QualityThresholds | None = None,
    original_size: tuple[int, int] | None = None,
) -> QualityReport:
    """Judge whether an image is a gradeable colour fundus photograph.

    Args:
        crop: (S, S, 3) uint8 RGB field-of-view crop (``models.preprocess.crop_to_fov``).
        fov: the field of view as detected on the whole image, in the original image's pixels whatever
            the decode size (its area, fill and corner facts tell a fundus from an ordinary photo; its
            diameter, a thumbnail from a photograph).
        fov_in_crop: the same circle in the crop's frame.
        thresholds: limits; the calibrated defaults when omitted.
        original_size: (height, width) of the whole image, for its proportions (not checked when omitted).
    """
    limits = thresholds or QualityThresholds()
    diameter = 2 * fov.radius
    values = {"fov_area": fov.area_fraction, "fill_ratio": fov.fill_ratio, "fov_diameter_px": diameter}
    reasons: list[str] = []
    if original_size is not None:
        values["aspect_ratio"] = max(original_size) / max(1, min(original_size))
        if values["aspect_ratio"] > limits.max_aspect_ratio:
            reasons.append(ELONGATED)
    if diameter < limits.min_fov_diameter_px:  # before "out of focus", which a thumbnail also fails
        reasons.append(
            f"too small to grade: the field of view is {diameter:.0f} px across "
            f"(at least {limits.min_fov_diameter_px:.0f} px needed)"
        )
    if (
        fov.area_fraction < limits.min_fov_area
        or not fov.corners_dark
        or fov.fill_ratio < limits.min_fill_ratio
    ):
        reasons.append(NO_FIELD)
    values.update(_measures(crop, fov_in_crop))
    if values["colour_spread"] < limits.min_colour_spread:  # said as such, not as "not fundus colours"
        reasons.append(GRAYSCALE)
    elif values["red_dominance"] < limits.min_red_dominance:
        reasons.append(NOT_FUNDUS_COLOURS)
    if values["mean_luminance"] < limits.min_mean_luminance:
        reasons.append(
            f"too dark (mean luminance {values['mean_luminance']:.0f} < {limits.min_mean_luminance:.0f})"
        )
    if values["overexposed_fraction"] > limits.max_overexposed_fraction:
        reasons.append(f"overexposed ({values['overexposed_fraction']:.0%} of the field is saturated)")
    if values["contrast"] < limits.min_contrast:
        reasons.append(
            f"low contrast (green-channel spread {values['contrast']:.1f} < {limits.min_contrast:.1f})"
        )
    if values["focus"] < limits.min_focus:
        reasons.append(f"out of focus (sharpness {values['focus']:.1f} < {limits.min_focus:.1f})")
    return QualityReport(gradeable=not reasons, reasons=tuple(reasons), measures=values)


# measure -> (limit field of QualityThresholds, "min" or "max", what it is)
MEASURE_LIMITS = {
    "aspect_ratio": ("max_aspect_ratio", "max", "longer side over shorter side of the whole image"),
    "fov_area": ("min_fov_area", "min", "share of the image inside the field of view"),
    "fill_ratio": ("min_fill_ratio", "min", "how round and filled the field of view is"),
    "fov_diameter_px": ("min_fov_diameter_px", "min", "field of view across, in the photograph's pixels"),
    "mean_luminance": ("min_mean_luminance", "min", "mean brightness inside the field (0-255)"),
    "overexposed_fraction": ("max_overexposed_fraction", "max", "share of saturated pixels"),
    "contrast": ("min_contrast", "min", "green-channel standard deviation"),
    "focus": ("min_focus", "min", "variance of the Laplacian of the green channel (sharpness)"),
    "red_dominance": ("min_red_dominance", "min", "red over the other channels: a fundus is red"),
    "colour_spread": ("min_colour_spread", "min", "mean spread between a pixel's channels: 0 is grayscale"),
}


def measure_rows(measures: dict[str, float]) -> list[tuple[str, float, str, str]]:
    """(measure, value, its limit as ">= 5" or "<= 0.2", what it is) for each of a ``QualityReport``'s
    ``measures``, in their order: what Inspect and the HTML report show a QA analyst."""
    limits = QualityThresholds()
    rows = []
    for key, value in measures.items():
        field_name, kind, meaning = MEASURE_LIMITS.get(key, (None, "", key))
        limit = f"{'>=' if kind == 'min' else '<='} {getattr(limits, field_name):g}" if field_name else ""
        rows.append((key, value, limit, meaning))
    return rows
