"""The Compare tab's scores table and gallery captions: each map's time, its faithfulness and localisation
scores (``workbench.explain.scoring``) once measured, and how long measuring them took."""

from __future__ import annotations

from typing import Any

from workbench.explain.notes import SCORE_COLUMNS
from workbench.explain.scoring import ExplanationScore

__all__ = ["SCORE_TABLE_HEADERS", "score_caption", "score_row"]

# a map's own time, its scores, then its scoring's time (deletion / insertion re-run the grader ~30 times:
# most of a comparison's time); columns added later go at the end, so API readers by position keep working
SCORE_TABLE_HEADERS: tuple[str, ...] = ("method", "seconds", *SCORE_COLUMNS, "scoring seconds")


def score_caption(
    name: str,
    seconds: float,
    score: ExplanationScore | None,
    scored_s: float | None = None,
    scoring: bool = False,
) -> str:
    """A gallery caption: the map's time, then "scoring..." while ``scoring``, or (once scored) its scores
    and how long scoring took."""
    caption = f"{name}: map {seconds:.2f} s"
    if score is None:
        return caption + (" | scoring..." if scoring else "")
    caption += f", scored in {scored_s:.2f} s" if scored_s is not None else ""
    # the directions as in the scores table's titles
    return caption + (
        f" | deletion {score.deletion_auc:.2f} (lower better), insertion {score.insertion_auc:.2f} "
        f"(higher better) | pointing {_local(score, score.pointing_game)}, "
        f"mass {_local(score, score.relevance_mass)}"
    )


def score_row(
    name: str, seconds: float, score: ExplanationScore | None, scored_s: float | None = None
) -> list[Any]:
    """A row of the scores table (``SCORE_TABLE_HEADERS``); the scores empty until they are measured."""
    if score is None:
        return [name, round(seconds, 3)] + [None] * (len(SCORE_TABLE_HEADERS) - 2)
    return [
        name,
        round(seconds, 3),
        round(score.deletion_auc, 3),
        round(score.insertion_auc, 3),
        _local(score, score.pointing_game),
        _local(score, score.relevance_mass),
        _local(score, score.relevance_rank),
        None if scored_s is None else round(scored_s, 3),
    ]


def _local(score: ExplanationScore, value: float | None) -> float | str | None:
    """A localisation score for display: "no evidence" for an empty map, "no lesions" without lesions."""
    if not score.evidence:
        return "no evidence"
    return "no lesions" if value is None else round(value, 3)
