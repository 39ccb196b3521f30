"""What an auditor signs off on, from graded rows: agreement, referable-DR operating points, calibration.

Figures are computed on the gradeable images (the screening convention: an ungradeable photograph is
re-taken or referred, not graded); unreadable and ungradeable images are listed with their reasons.

- Grading: ``workbench.metrics.grading_metrics`` (the same function as ``drwb evaluate``), confusion
  matrix, per-grade recall, bootstrap 95% intervals (``workbench.intervals``).
- Referable DR (grade >= 2), scored by the summed probability of grades >= 2: ROC curve and AUC, and
  sensitivity / specificity at the model's operating threshold (0.5) and at the highest thresholds that
  reach 90% and 95% sensitivity.
- Calibration: reliability diagram and expected calibration error (10 equal-width bins) of the referable
  probability (observed share of referable images per bin) and of the DR grade (top-label).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.constants import REFERABLE_MIN_GRADE
from workbench.calibration import binned_reliability, reliability
from workbench.intervals import bootstrap_intervals
from workbench.metrics import confusion_matrix, grading_metrics, json_safe, sensitivity_specificity

__all__ = ["audit_figures", "binary_reliability", "operating_points", "roc_curve", "training_overlap_note"]

OPERATING_THRESHOLD = 0.5


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """ROC points (false-positive rate, true-positive rate) at every distinct score, highest first."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    thresholds = np.unique(scores)[::-1]
    pos, neg = max(labels.sum(), 1), max((~labels).sum(), 1)
    tpr = [float((scores[labels] >= t).sum() / pos) for t in thresholds]
    fpr = [float((scores[~labels] >= t).sum() / neg) for t in thresholds]
    return {"fpr": [0.0] + fpr, "tpr": [0.0] + tpr, "thresholds": [float("inf")] + thresholds.tolist()}


def operating_points(labels: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """Sensitivity / specificity at the operating threshold and at 90% / 95% target sensitivity."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    points = []
    sens, spec = sensitivity_specificity(labels, scores >= OPERATING_THRESHOLD)
    points.append(
        {
            "name": "operating (p >= 0.5)",
            "threshold": OPERATING_THRESHOLD,
            "sensitivity": sens,
            "specificity": spec,
        }
    )
    for target in (0.90, 0.95):
        chosen = None
        for t in np.unique(scores)[::-1]:  # highest threshold first: the most specific one that reaches it
            if sensitivity_specificity(labels, scores >= t)[0] >= target:
                chosen = float(t)
                break
        if chosen is None:
            points.append(
                {
                    "name": f"{target:.0%} sensitivity",
                    "threshold": None,
                    "sensitivity": None,
                    "specificity": None,
                }
            )
            continue
        sens, spec = sensitivity_specificity(labels, scores >= chosen)
        points.append(
            {
                "name": f"{target:.0%} sensitivity",
                "threshold": chosen,
                "sensitivity": sens,
                "specificity": spec,
            }
        )
    return points


def binary_reliability(probability: np.ndarray, outcome: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability of a binary probability: per bin, mean predicted vs observed share; and its ECE."""
    result = binned_reliability(probability, outcome, bins)
    return {
        "edges": result.edges.tolist(),
        "counts": result.counts.tolist(),
        "predicted": result.confidence.tolist(),
        "observed": result.accuracy.tolist(),
        "ece": result.ece,
    }


def audit_figures(graded: list, worst: int = 8) -> dict[str, Any]:
    """Every figure of the audit report (JSON-safe: undefined values are None)."""
    unreadable = [{"image": g.name, "error": g.error} for g in graded if g.error]
    ungradeable = [
        {"image": g.name, "reasons": list(g.reasons)} for g in graded if not g.error and not g.gradeable
    ]
    rows = [g for g in graded if not g.error and g.gradeable]
    out: dict[str, Any] = {
        "n": len(graded),
        "n_unreadable": len(unreadable),
        "n_ungradeable": len(ungradeable),
        "n_graded": len(rows),
        "gradeable_rate": (len(rows) / (len(graded) - len(unreadable)))
        if len(graded) > len(unreadable)
        else None,
        "unreadable": unreadable,
        "ungradeable": ungradeable,
    }
    if not rows:
        return json_safe(out)
    p_dr = np.stack([g.p_dr for g in rows])
    t_dr = np.array([g.dr_true for g in rows])
    has_dme = np.array([g.dme_true is not None for g in rows])
    p_dme = np.stack([g.p_dme for g in rows])
    # DME figures only over images that have a DME label; -1 marks "no label" for the joint accuracy
    t_dme = np.array([-1 if g.dme_true is None else g.dme_true for g in rows])
    metrics = grading_metrics(p_dr, p_dme, t_dr, t_dme)

    def _dme_figures(idx: np.ndarray) -> dict[str, float]:
        """DME and joint accuracy over the rows ``idx`` that have a DME label (nan when none has)."""
        labelled = idx[has_dme[idx]]
        if not len(labelled):
            return {"dme_accuracy": float("nan"), "joint_accuracy": float("nan")}
        dme_right = p_dme[labelled].argmax(1) == t_dme[labelled]
        joint = dme_right & (p_dr[labelled].argmax(1) == t_dr[labelled])
        return {"dme_accuracy": float(dme_right.mean()), "joint_accuracy": float(joint.mean())}

    metrics |= _dme_figures(np.arange(len(rows)))
    metrics["dme_labelled"] = int(has_dme.sum())
    metrics["confusion_matrix"] = confusion_matrix(t_dr, p_dr.argmax(1), 5).tolist()

    def _resample(idx: np.ndarray) -> dict[str, Any]:
        m = grading_metrics(p_dr[idx], p_dme[idx], t_dr[idx], t_dme[idx])
        out = {
            k: m[k]
            for k in (
                "dr_accuracy",
                "dr_qwk",
                "referable_auc",
                "referable_sensitivity",
                "referable_specificity",
            )
        }
        return out | _dme_figures(idx)

    metrics["ci95"] = bootstrap_intervals(len(rows), _resample)
    referable_true = t_dr >= REFERABLE_MIN_GRADE
    referable_score = p_dr[:, REFERABLE_MIN_GRADE:].sum(1)
    pred = p_dr.argmax(1)
    distance = np.abs(pred - t_dr)
    confidence = p_dr[np.arange(len(rows)), pred]
    order = np.lexsort((-confidence, -distance))
    worst_rows = [
        {
            "image": rows[i].name,
            "dr_true": int(t_dr[i]),
            "dr_pred": int(pred[i]),
            "probability": float(confidence[i]),
            "referable_probability": float(referable_score[i]),
        }
        for i in order[:worst]
        if distance[i] > 0
    ]
    out.update(
        {
            "grading": metrics,
            "roc": roc_curve(referable_true, referable_score),
            "operating_points": operating_points(referable_true, referable_score),
            "calibration": {
                "referable": binary_reliability(referable_score, referable_true),
                "dr_top_label_ece": reliability(p_dr, t_dr).ece,
            },
            "worst_errors": worst_rows,
        }
    )
    return json_safe(out)


def training_overlap_note(figures: dict[str, Any]) -> str | None:
    """One sentence on how many audited photographs the grader trained on (None: none did), or that its
    card does not say (``workbench.provenance``): figures on training photographs are optimistic."""
    seen = figures.get("seen_in_training", {})
    if seen is None:
        return "The grader's card does not record its training files: whether it trained on these is unknown."
    if not seen.get("n"):
        return None
    note = (
        f"{seen['n']} of the {figures['n']} photographs are ones this grader trained on (the same file, or "
        "the same photograph at another size or quality): the figures above are optimistic for them."
    )
    rest = figures.get("grading_not_trained_on")
    if rest:
        shown = {k: "n/a" if rest.get(k) is None else f"{rest[k]:.3f}" for k in ("dr_accuracy", "dr_qwk")}
        note += (
            f" On the {figures['n'] - seen['n'] - len(seen.get('unknown', []))} it did not train on: DR "
            f"accuracy {shown['dr_accuracy']}, "
            f"QWK {shown['dr_qwk']}."
        )
    return note
