"""What each lesion type's masks are worth: validated AUPR from the segmenter's card against a floor.

A lesion type whose validated AUPR (original resolution, held-out IDRiD images) is below
``RELIABILITY_FLOOR`` is shown greyed with the reason, its counts and areas not presented as facts.
The per-type binarisation thresholds (best Dice on validation) come from the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.constants import LESION_CODES

__all__ = [
    "RELIABILITY_FLOOR",
    "LesionReliability",
    "lesion_reliability",
    "lesion_thresholds",
    "reliable_types",
    "segmenter_figures",
]

RELIABILITY_FLOOR = 0.30  # validated AUPR below which a lesion type's counts and areas are not facts


@dataclass(frozen=True)
class LesionReliability:
    """How far one lesion type's masks can be trusted: the segmenter card's validated AUPR (original
    resolution, held-out IDRiD images) against ``RELIABILITY_FLOOR``."""

    code: str
    aupr: float | None
    reliable: bool
    note: str


def segmenter_figures(card_training: dict, profile: str = "quality") -> dict:
    """A segmenter card's validation figures for a profile (see ``Workbench._measured``)."""
    evaluation = card_training.get("evaluation", {})
    if profile != "quality" and evaluation.get(f"val_{profile}"):
        return evaluation[f"val_{profile}"]
    return evaluation.get("val") or card_training.get("validation", {})


def lesion_thresholds(measured: dict) -> dict[str, float]:
    """Best-Dice threshold per lesion type from a segmenter's validation figures (0.5 where missing)."""
    return {code: float(measured.get(f"threshold_{code}") or 0.5) for code in LESION_CODES}


def lesion_reliability(measured: dict, gradeable: bool = True) -> dict[str, LesionReliability]:
    """Per lesion type, from a segmenter's validation figures (``segmenter_figures``). On a photograph
    that failed the quality check (analysed on request) no type is reliable, whatever its figures: they
    were measured on gradeable photographs."""
    out = {}
    for code in LESION_CODES:
        aupr = measured.get(f"aupr_{code}")
        if not gradeable:
            note = "unreliable: the photograph failed the quality check (analysed on request)"
            out[code] = LesionReliability(code, None if aupr is None else float(aupr), False, note)
        elif aupr is None:
            out[code] = LesionReliability(
                code, None, False, "unreliable: no validated AUPR in the model card"
            )
        elif aupr < RELIABILITY_FLOOR:
            note = (
                f"unreliable: validated AUPR {aupr:.2f} < {RELIABILITY_FLOOR:.2f}; counts and areas are noise"
            )
            out[code] = LesionReliability(code, float(aupr), False, note)
        else:
            out[code] = LesionReliability(code, float(aupr), True, f"validated AUPR {aupr:.2f}")
    return out


def reliable_types(measured: dict) -> frozenset[str]:
    """The lesion types whose validated AUPR clears the floor, photograph quality aside: the types that
    keep a pixel two types claim (``workbench.analysis.lesion_maps.one_type_per_pixel``)."""
    return frozenset(code for code, r in lesion_reliability(measured).items() if r.reliable)
