"""Analysis of one photograph: ``Workbench.analyze(image) -> Analysis``, the one call every face makes.

- ``pipeline``: the ``Workbench`` (models loaded once; load -> crop -> quality -> grading -> lesions ->
  landmarks -> anatomy -> explanations) and its profiles (quality / fast);
- ``result``: what it returns (``Analysis``, ``LesionSummary``);
- ``lesion_maps``: from lesion probability maps to masks, counts, areas, one disc, counts by region;
- ``lesion_trust``: what each lesion type's masks are worth (validated AUPR against a floor).
"""

from __future__ import annotations

from workbench.analysis.lesion_maps import inside_field
from workbench.analysis.lesion_trust import (
    RELIABILITY_FLOOR,
    LesionReliability,
    lesion_reliability,
    lesion_thresholds,
    segmenter_figures,
)
from workbench.analysis.pipeline import FAST_SEGMENT_SIZE, PROFILES, Workbench, profile_from_env
from workbench.analysis.result import Analysis, LesionSummary

__all__ = [
    "FAST_SEGMENT_SIZE",
    "PROFILES",
    "RELIABILITY_FLOOR",
    "Analysis",
    "LesionReliability",
    "LesionSummary",
    "Workbench",
    "inside_field",
    "lesion_reliability",
    "lesion_thresholds",
    "segmenter_figures",
    "profile_from_env",
]
