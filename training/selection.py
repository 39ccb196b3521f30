"""``drwb selection-check``: how much of a default grader's OOF figure is the luck of being chosen.

A default grader is the candidate with the best OOF score, so its OOF figures were also used to choose it
and are optimistic (the winner's curse), the more so the more candidates there were. Nested
cross-validation measures the choosing itself: for each fold, every candidate is scored on the other
folds only (member temperatures, ensemble temperature and score all fitted there), the best is picked,
and the pick grades the held-out fold. Each image is then graded by a candidate that was chosen without
its label, by fold models that never trained on it; the pooled figures estimate what "take the best by OOF
score" delivers on new images, where the chosen candidate's own OOF figures estimate the best of many.

The candidates are every combination of the given members (each on the photograph only, and with the
mirror view when asked), within a cost in forward passes, combined as ``models.ensemble.GraderEnsemble``
combines them (each member's logits divided by its own temperature, averaged, divided by the ensemble's).
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from models.classifier import NUM_DR
from training.ensemble import member_oof, oof_truth
from training.oof import with_intervals
from workbench.calibration import expected_calibration_error, fit_temperature, softmax
from workbench.metrics import grading_metrics, json_safe

__all__ = ["Candidate", "candidates", "nested_selection", "record_selection", "selection_check"]

Candidate = tuple[tuple[str, ...], bool]  # (member stems, with the mirror view)
_HEADLINE = ("dr_accuracy", "dr_qwk", "dme_accuracy", "joint_accuracy", "referable_auc", "score")


def candidates(members: list[str], max_passes: int | None, mirror: bool) -> list[Candidate]:
    """Every non-empty combination of ``members``, plain and (with ``mirror``) with the mirror view, that
    costs at most ``max_passes`` forward passes a photograph (a member is one pass, two with the mirror)."""
    out = []
    for size in range(1, len(members) + 1):
        for combo in combinations(members, size):
            for flip in (False, True) if mirror else (False,):
                if max_passes is None or len(combo) * (2 if flip else 1) <= max_passes:
                    out.append((combo, flip))
    return out


def _name(candidate: Candidate) -> str:
    combo, flip = candidate
    return " + ".join(combo) + (" (with the mirror view)" if flip else "")


def _heads(logits: np.ndarray, temperature: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    return softmax(logits[:, :NUM_DR], temperature[0]), softmax(logits[:, NUM_DR:], temperature[1])


def _fit(logits: np.ndarray, t_dr: np.ndarray, t_dme: np.ndarray) -> tuple[float, float]:
    return fit_temperature(logits[:, :NUM_DR], t_dr), fit_temperature(logits[:, NUM_DR:], t_dme)


def _combined(
    raw: dict[str, dict[str, np.ndarray]],
    candidate: Candidate,
    fit_on: np.ndarray,
    truth: dict[str, np.ndarray],
) -> np.ndarray:
    """The candidate's logits on every image, each member divided by its temperature fitted on ``fit_on``."""
    views = []
    for stem in candidate[0]:
        member = raw[stem]
        t_dr, t_dme = _fit(member["logits"][fit_on], truth["dr_true"][fit_on], truth["dme_true"][fit_on])
        scale = np.array([t_dr] * NUM_DR + [t_dme] * (member["logits"].shape[1] - NUM_DR))
        plain = member["logits"] / scale
        views.append((plain + member["logits_flip"] / scale) / 2 if candidate[1] else plain)
    return np.mean(views, axis=0)


def nested_selection(
    raw: dict[str, dict[str, np.ndarray]], truth: dict[str, np.ndarray], pool: list[Candidate]
) -> dict[str, Any]:
    """Nested cross-validation of "the best of ``pool`` by OOF score" over ``truth["fold"]``.

    Args:
        raw: per member stem, its OOF ``logits`` and ``logits_flip`` (not divided by any temperature), in
            the order of ``truth``'s images.
        truth: ``dr_true``, ``dme_true`` and ``fold`` (the folds the members were cross-validated on).
        pool: the candidates.

    Returns:
        ``nested``: figures with bootstrap intervals of the pooled held-out grades (every temperature
        fitted on the other folds), its DR ECE; ``picks``: the candidate chosen for each fold;
        ``selected_on_all``: the candidate the same rule picks on every image, with its own OOF figures
        (what would ship); ``optimism``: those figures minus the nested ones.
    """
    if not pool:
        raise ValueError("no candidate within the cost: raise --max-passes or give more members")
    t_dr, t_dme, folds = (np.asarray(truth[k], int) for k in ("dr_true", "dme_true", "fold"))
    n = len(t_dr)
    p_dr, p_dme = np.zeros((n, NUM_DR)), np.zeros((n, 3))
    picks = {}

    def best(fit_on: np.ndarray) -> tuple[Candidate, np.ndarray, tuple[float, float]]:
        ranked = []
        for rank, candidate in enumerate(pool):
            logits = _combined(raw, candidate, fit_on, truth)
            temperature = _fit(logits[fit_on], t_dr[fit_on], t_dme[fit_on])
            a, b = _heads(logits[fit_on], temperature)
            score = grading_metrics(a, b, t_dr[fit_on], t_dme[fit_on])["score"]
            ranked.append((-score, rank, candidate, logits, temperature))  # ties: the earlier (cheaper)
        _, _, candidate, logits, temperature = min(ranked, key=lambda r: r[:2])
        return candidate, logits, temperature

    for fold in np.unique(folds):
        held = folds == fold
        candidate, logits, temperature = best(~held)
        p_dr[held], p_dme[held] = _heads(logits[held], temperature)
        picks[int(fold)] = _name(candidate)
    nested = with_intervals(p_dr, p_dme, t_dr, t_dme)
    nested["dr_ece"] = expected_calibration_error(p_dr, t_dr)
    every = np.ones(n, bool)
    chosen, logits, temperature = best(every)
    a, b = _heads(logits, temperature)
    on_all = grading_metrics(a, b, t_dr, t_dme)
    return json_safe(
        {
            "candidates": len(pool),
            "picks": picks,
            "nested": nested,
            "selected_on_all": {"candidate": _name(chosen), **{k: on_all[k] for k in _HEADLINE}},
            "optimism": {k: on_all[k] - nested[k] for k in _HEADLINE},
        }
    )


def selection_check(
    members: list[str], data: Path, folder: Path, max_passes: int | None = None, mirror: bool = False
) -> dict[str, Any]:
    """``nested_selection`` over every combination of the shipped cross-validated graders ``members``."""
    loaded = {stem: member_oof(stem, folder, scaled=False)[1] for stem in members}
    truth = oof_truth(members, list(loaded.values()), data)
    pool = candidates(members, max_passes, mirror)
    return {
        "members": members,
        "max_passes": max_passes,
        "mirror_view": mirror,
        **nested_selection(loaded, truth, pool),
    }


def record_selection(result: dict[str, Any], stem: str, folder: Path, command: str) -> Path:
    """Store ``result`` under ``training.evaluation.selection_aware`` of the card ``stem`` (JSON only; the
    weights and their sha256 are untouched), after checking that the rule picks that very grader on every
    image: otherwise the nested figures would describe another choice."""
    path = Path(folder) / f"{stem}.json"
    card = json.loads(path.read_text())
    extra = card.get("extra") or {}
    members = tuple(m["model"] for m in extra.get("members") or []) or (stem,)
    mine = _name((members, bool(extra.get("flip"))))
    if result["selected_on_all"]["candidate"] != mine:
        raise ValueError(
            f"the rule picks {result['selected_on_all']['candidate']} on every image, not {stem} ({mine}): "
            "its nested figures would describe another grader"
        )
    card["training"].setdefault("evaluation", {})["selection_aware"] = {
        "command": command,
        "note": "nested cross-validation of the choice (training.selection): per fold, every candidate "
        "scored on the other folds only, the best graded the held-out fold; nested = the pooled held-out "
        "figures (what choosing the best by OOF score delivers), optimism = this grader's own OOF figures "
        "minus them",
        **result,
    }
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path
