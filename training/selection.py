"""``drwb selection-check``: how much of a default grader's OOF figure is the luck of being chosen.

A default grader is the candidate with the best OOF score, so its OOF figures were also used to choose it
and are optimistic (the winner's curse), the more so the more candidates there were. Nested
cross-validation measures the choosing itself: for each fold, every candidate is scored on the other
folds only (member temperatures, ensemble temperature and score all fitted there), the best is picked,
and the pick grades the held-out fold. Each image is then graded by fold models that never trained on it,
through a choice and temperatures fitted without its label; the pooled figures estimate what "take the best
by OOF score" delivers, where the chosen candidate's own OOF figures are the best of many. Still somewhat
optimistic: the other folds' OOF logits that make the choice come from fold models that trained on the
held-out fold's images (a full nested estimate would retrain every member inside each outer fold).

The candidates are every combination of the given members (on the photograph only and, for ensembles when
asked, with the mirror view too), within a cost in forward passes, combined as
``models.ensemble.GraderEnsemble`` combines them (each member's logits divided by its own temperature,
averaged, divided by the ensemble's).
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from models.classifier import NUM_DR
from models.registry import ensemble_passes
from training.ensemble import combine_members, member_oof, oof_truth
from training.oof import with_intervals
from workbench.calibration import expected_calibration_error, fit_temperature, softmax
from workbench.metrics import grading_metrics, json_safe

__all__ = [
    "Candidate",
    "candidates",
    "held_out_choice",
    "nested_selection",
    "record_selection",
    "selection_check",
]

Candidate = tuple[tuple[str, ...], bool]  # (member stems, with the mirror view)
_HEADLINE = ("dr_accuracy", "dr_qwk", "dme_accuracy", "joint_accuracy", "referable_auc", "score")


def candidates(members: list[str], max_passes: int | None, mirror: bool) -> list[Candidate]:
    """Every non-empty combination of ``members``, plain and (with ``mirror``, two members or more: only an
    ensemble has a mirror view) with the mirror view, that costs at most ``max_passes`` forward passes a
    photograph (a member is one pass, two with the mirror)."""
    out = []
    for size in range(1, len(members) + 1):
        for combo in combinations(members, size):
            for flip in (False, True) if mirror and size > 1 else (False,):  # one grader ships plain
                if max_passes is None or _passes((combo, flip)) <= max_passes:
                    out.append((combo, flip))
    return out


def _passes(candidate: Candidate) -> int:
    """Forward passes a photograph (``models.registry.ensemble_passes``)."""
    return ensemble_passes(len(candidate[0]), candidate[1])


def _name(candidate: Candidate) -> str:
    combo, flip = candidate
    return " + ".join(combo) + (" (with the mirror view)" if flip else "")


def _heads(logits: np.ndarray, temperature: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    return softmax(logits[:, :NUM_DR], temperature[0]), softmax(logits[:, NUM_DR:], temperature[1])


def _fit(logits: np.ndarray, t_dr: np.ndarray, t_dme: np.ndarray) -> tuple[float, float]:
    return fit_temperature(logits[:, :NUM_DR], t_dr), fit_temperature(logits[:, NUM_DR:], t_dme)


def _scaled(
    raw: dict[str, dict[str, np.ndarray]], fit_on: np.ndarray, truth: dict[str, np.ndarray]
) -> dict[str, dict[str, np.ndarray]]:
    """Each member's logits (both views) divided by its own temperature fitted on ``fit_on``, once."""
    out = {}
    for stem, member in raw.items():
        t_dr, t_dme = _fit(member["logits"][fit_on], truth["dr_true"][fit_on], truth["dme_true"][fit_on])
        scale = np.array([t_dr] * NUM_DR + [t_dme] * (member["logits"].shape[1] - NUM_DR))
        out[stem] = {"logits": member["logits"] / scale, "logits_flip": member["logits_flip"] / scale}
    return out


def _best(
    raw: dict[str, dict[str, np.ndarray]],
    truth: dict[str, np.ndarray],
    pool: list[Candidate],
    fit_on: np.ndarray,
) -> tuple[Candidate, np.ndarray, tuple[float, float]]:
    """The candidate with the best score on the images ``fit_on`` (ties: the cheaper, then the earlier),
    its logits on every image and its temperatures, everything fitted on ``fit_on`` only."""
    t_dr, t_dme = np.asarray(truth["dr_true"], int), np.asarray(truth["dme_true"], int)
    scaled = _scaled(raw, fit_on, truth)
    ranked = []
    for rank, candidate in enumerate(pool):
        logits = combine_members([scaled[stem] for stem in candidate[0]], candidate[1])
        temperature = _fit(logits[fit_on], t_dr[fit_on], t_dme[fit_on])
        a, b = _heads(logits[fit_on], temperature)
        score = grading_metrics(a, b, t_dr[fit_on], t_dme[fit_on])["score"]
        ranked.append((-score, _passes(candidate), rank, candidate, logits, temperature))
    *_, candidate, logits, temperature = min(ranked, key=lambda r: r[:3])
    return candidate, logits, temperature


def held_out_choice(
    raw: dict[str, dict[str, np.ndarray]], truth: dict[str, np.ndarray], pool: list[Candidate]
) -> tuple[np.ndarray, np.ndarray, dict[int, Candidate]]:
    """Per fold, the best of ``pool`` on the other folds grades that fold: DR and DME probabilities of
    every image, and the candidate picked for each fold."""
    if not pool:
        raise ValueError("no candidate within the cost: raise --max-passes or give more members")
    folds = np.asarray(truth["fold"])
    p_dr, p_dme = np.zeros((len(folds), NUM_DR)), np.zeros((len(folds), 3))
    picks = {}
    for fold in np.unique(folds):
        held = folds == fold
        candidate, logits, temperature = _best(raw, truth, pool, ~held)
        p_dr[held], p_dme[held] = _heads(logits[held], temperature)
        picks[int(fold)] = candidate
    return p_dr, p_dme, picks


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
    t_dr, t_dme = np.asarray(truth["dr_true"], int), np.asarray(truth["dme_true"], int)
    p_dr, p_dme, picks = held_out_choice(raw, truth, pool)
    nested = with_intervals(p_dr, p_dme, t_dr, t_dme)
    nested["dr_ece"] = expected_calibration_error(p_dr, t_dr)
    chosen, logits, temperature = _best(raw, truth, pool, np.ones(len(t_dr), bool))
    a, b = _heads(logits, temperature)
    on_all = grading_metrics(a, b, t_dr, t_dme)
    return json_safe(
        {
            "candidates": len(pool),
            "picks": {fold: _name(candidate) for fold, candidate in picks.items()},
            "nested": nested,
            "selected_on_all": {
                "candidate": _name(chosen),
                "members": list(chosen[0]),
                "mirror_view": chosen[1],
                **{k: on_all[k] for k in _HEADLINE},
            },
            "optimism": {k: on_all[k] - nested[k] for k in _HEADLINE},
        }
    )


def selection_check(
    members: list[str], data: Path, folder: Path, max_passes: int | None = None, mirror: bool = False
) -> dict[str, Any]:
    """``nested_selection`` over every combination of the shipped cross-validated graders ``members``."""
    cards = {stem: member_oof(stem, folder, scaled=False) for stem in members}
    loaded = {stem: arrays for stem, (_, arrays) in cards.items()}
    truth = oof_truth(members, list(loaded.values()), data)
    pool = candidates(members, max_passes, mirror)
    return {
        "members": members,
        "member_sha256": {stem: card.sha256 for stem, (card, _) in cards.items()},
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
    members = {m["model"]: m.get("sha256") for m in extra.get("members") or []} or {stem: card.get("sha256")}
    picked = result["selected_on_all"]
    if set(picked["members"]) != set(members) or picked["mirror_view"] != bool(extra.get("flip")):
        raise ValueError(
            f"the rule picks {picked['candidate']} on every image, not {stem} "
            f"({_name((tuple(members), bool(extra.get('flip'))))}): its nested figures would describe "
            "another grader"
        )
    stale = [m for m, sha in members.items() if sha and result["member_sha256"].get(m) != sha]
    if stale:
        raise ValueError(
            f"{', '.join(stale)}: the weights measured differ from those {stem} names (sha256); "
            "rebuild the ensemble or measure again"
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
