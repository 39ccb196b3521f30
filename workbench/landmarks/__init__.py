"""Landmarks: where the optic disc and the fovea are, and how far to trust them.

- ``placement``: one optic disc from the segmented disc, the fovea checked against anatomy (landmark
  prior), and the doubt the faces show (``place_landmarks``);
- ``disc``: the disc segmented again in a window around the localizer's disc (``DiscRefiner``);
- ``fovea``: the fovea found again in a window around the localizer's fovea (``FoveaRefiner``);
- ``window_model``: what both refiners share (cut the window, run the network);
- ``laterality``: which eye the landmarks show, checked against what the file says (``read_laterality``).
"""

from __future__ import annotations

from workbench.landmarks.laterality import Laterality, read_laterality
from workbench.landmarks.placement import (
    DD_RANGE,
    LOW_CONFIDENCE,
    MAX_DEVIATION,
    FoveaEstimate,
    PlacedLandmarks,
    check_fovea,
    choose_disc,
    fovea_doubts,
    place_landmarks,
)

__all__ = [
    "DD_RANGE",
    "LOW_CONFIDENCE",
    "MAX_DEVIATION",
    "FoveaEstimate",
    "Laterality",
    "PlacedLandmarks",
    "check_fovea",
    "choose_disc",
    "fovea_doubts",
    "place_landmarks",
    "read_laterality",
]
