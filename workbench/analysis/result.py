"""What ``Workbench.analyze`` returns: one image's grades, lesions, landmarks, anatomy and explanations.

Arrays are in the crop frame with their transform; points are in the original image's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.constants import REFERABLE_MIN_GRADE
from models.fov import FieldOfView
from models.preprocess import CropTransform
from workbench.analysis.lesion_trust import LesionReliability
from workbench.anatomy import DmeRuleCheck, EtdrsGrid
from workbench.explain.explainers import Heatmap
from workbench.landmarks.laterality import Laterality
from workbench.quality import QualityReport

__all__ = ["UNCERTAIN_BELOW", "Analysis", "LesionSummary", "grade_uncertainty_note", "referral_note"]


@dataclass(frozen=True)
class LesionSummary:
    """One lesion type: binary mask on the segmenter crop, probability map, count and area (original px)."""

    code: str
    count: int
    area_px: float
    mask: np.ndarray
    probability: np.ndarray
    centroids_xy: np.ndarray  # (N, 2) component centroids in original pixels


@dataclass(frozen=True)
class Analysis:
    """Everything known about one image. Arrays are crop-frame with their transform, points original."""

    name: str
    original_size: tuple[int, int]
    quality: QualityReport
    fov: FieldOfView
    graded: bool
    crop: np.ndarray
    crop_transform: CropTransform
    dr_probabilities: np.ndarray | None = None
    dme_probabilities: np.ndarray | None = None
    lesions: dict[str, LesionSummary] = field(default_factory=dict)
    lesion_transform: CropTransform | None = None
    od_xy: tuple[float, float] | None = None
    od_radius_px: float | None = None
    od_confidence: float | None = None
    fovea_xy: tuple[float, float] | None = None
    fovea_confidence: float | None = None
    fovea_doubt: str | None = None  # why the fovea is not trusted (None: trusted); grid/regions/rule then off
    # the landmark refiners (workbench.landmarks): None without one; for the fovea, False when the refiner
    # found none in its window (the localizer's stands)
    fovea_refined: bool | None = None
    disc_outline_refined: bool | None = None
    od_doubt: str | None = None
    laterality: Laterality | None = None  # the eye the landmarks show, checked against the file's label
    etdrs: EtdrsGrid | None = None
    dme_check: DmeRuleCheck | None = None
    lesions_by_region: dict[str, dict[str, int]] = field(default_factory=dict)
    heatmaps: dict[str, Heatmap] = field(default_factory=dict)
    lesion_reliability: dict[str, LesionReliability] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    # what ran each of those models ("onnxruntime 1.32.0", "pytorch 2.14.1"): workbench.runtime
    runtimes: dict[str, str] = field(default_factory=dict)
    # what the file held (image_io.LoadedImage): "JPEG" / "RGB", "DICOM" / "YBR_FULL_422 8-bit, JPEG Baseline"
    source_format: str = ""
    source_mode: str = ""
    profile: str = "quality"  # the analysis profile that ran (workbench.analysis.pipeline.PROFILES)

    @property
    def dr_grade(self) -> int | None:
        return None if self.dr_probabilities is None else int(np.argmax(self.dr_probabilities))

    @property
    def dme_grade(self) -> int | None:
        return None if self.dme_probabilities is None else int(np.argmax(self.dme_probabilities))

    @property
    def referable_probability(self) -> float | None:
        if self.dr_probabilities is None:
            return None
        return float(self.dr_probabilities[REFERABLE_MIN_GRADE:].sum())

    def lesion_quantities(self, code: str) -> dict[str, float | None]:
        """Area of one lesion type in comparable units: original px, % of the field of view, disc areas."""
        summary = self.lesions[code]
        field_area = np.pi * self.fov.radius**2
        disc_area = np.pi * self.od_radius_px**2 if self.od_radius_px else None
        return {
            "area_px": summary.area_px,
            "area_percent_of_field": 100.0 * summary.area_px / field_area if field_area else None,
            "area_disc_areas": summary.area_px / disc_area if disc_area else None,
        }

    @property
    def referable(self) -> bool | None:
        p = self.referable_probability
        return None if p is None else p >= 0.5


# A grade whose probability is below this is shown with the runner-up: the headline alone would read as sure.
UNCERTAIN_BELOW = 0.6


def grade_uncertainty_note(dr_probabilities: np.ndarray) -> str | None:
    """The two most likely grades ("grade 4 (0.54) or grade 2 (0.37) ...") when the most likely is below
    ``UNCERTAIN_BELOW``, else None."""
    p = np.asarray(dr_probabilities, float)
    first, second = (int(i) for i in np.argsort(p)[::-1][:2])
    if p[first] >= UNCERTAIN_BELOW:
        return None
    return (
        f"grade {first} ({p[first]:.2f}) or grade {second} ({p[second]:.2f}), the two most likely; no grade "
        f"reaches {UNCERTAIN_BELOW}"
    )


def referral_note(dr_grade: int, referable_probability: float) -> str | None:
    """Why the referral differs from what the grade alone suggests, or None where they agree.

    The grade is the single most likely of five; referable DR is the summed probability of grades 2-4
    (>= 0.5), the screening decision. A flat distribution can make "No DR" the most likely grade while grades
    2-4 together are more likely still (or the reverse), which reads as a contradiction unless said.
    """
    referable = referable_probability >= 0.5
    if referable == (dr_grade >= REFERABLE_MIN_GRADE):
        return None
    if referable:
        return (
            f"Grade {dr_grade} is the single most likely grade, but grades {REFERABLE_MIN_GRADE}-4 together "
            f"are more likely ({referable_probability:.2f}): referred on that sum. An uncertain grade."
        )
    return (
        f"Grade {dr_grade} is the single most likely grade, but grades 0-{REFERABLE_MIN_GRADE - 1} together "
        f"are more likely ({1 - referable_probability:.2f}): not referred on that sum. An uncertain grade."
    )
