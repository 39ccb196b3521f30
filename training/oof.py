"""Out-of-fold (OOF) predictions scored: metrics with intervals, temperatures, calibration, CSV files.

``training.cv`` produces the predictions (each image by the fold model that did not train on it); this
module scores them, wherever they come from: a run folder's ``oof.npz`` or a shipped ``*.oof.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.classifier import NUM_DR
from workbench.calibration import (
    ece_if_calibrated,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_bias,
    reliability,
    softmax,
)
from workbench.intervals import bootstrap_intervals
from workbench.io.idrid import IDRiD
from workbench.metrics import confusion_matrix, grading_metrics, json_safe

__all__ = [
    "cross_fitted_ece",
    "evaluate_oof",
    "oof_metrics",
    "with_intervals",
    "oof_summary",
    "read_oof_csv",
    "teacher_comparison",
    "write_oof_csv",
]


_HEADS = [f"dr{i}" for i in range(NUM_DR)] + [f"dme{i}" for i in range(3)]


def write_oof_csv(oof: dict[str, np.ndarray], path: Path) -> None:
    """OOF logits (plain and mirrored) per image as CSV: small, diffable, no pickles. Labels are not
    stored: whoever re-scores the file reads them from the dataset."""
    header = ["image", "fold"] + [f"logit_{h}" for h in _HEADS] + [f"flip_logit_{h}" for h in _HEADS]
    lines = [",".join(header)]
    for i, name in enumerate(oof["names"]):
        values = np.concatenate([oof["logits"][i], oof["logits_flip"][i]])
        lines.append(",".join([str(name), str(int(oof["fold"][i]))] + [f"{v:.6g}" for v in values]))
    path.write_text("\n".join(lines) + "\n")


def read_oof_csv(path: Path) -> dict[str, np.ndarray]:
    """The arrays ``write_oof_csv`` wrote (without labels)."""
    import csv

    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "image" not in rows[0]:
        raise ValueError(f"{path}: not an OOF predictions file (expected columns image, fold, logit_dr0...)")
    return {
        "names": np.array([r["image"] for r in rows]),
        "fold": np.array([int(r["fold"]) for r in rows]),
        "logits": np.array([[float(r[f"logit_{h}"]) for h in _HEADS] for r in rows]),
        "logits_flip": np.array([[float(r[f"flip_logit_{h}"]) for h in _HEADS] for r in rows]),
    }


def evaluate_oof(source: Path, data: Path) -> dict[str, Any]:
    """OOF metrics of a ``--folds`` run folder (its ``oof.npz``) or an OOF CSV, labels from ``data``."""
    source = Path(source)
    if source.is_dir():
        with np.load(source / "oof.npz", allow_pickle=False) as arrays:
            oof = {k: arrays[k] for k in ("names", "fold", "logits", "logits_flip")}
    else:
        oof = read_oof_csv(source)
    labels = {r.name: r for r in IDRiD(data).grading("train")}
    missing = [str(n) for n in oof["names"] if str(n) not in labels]
    if missing:
        raise ValueError(f"{len(missing)} OOF images have no label in {data}: {', '.join(missing[:5])}")
    oof["dr_true"] = np.array([labels[str(n)].dr_grade for n in oof["names"]])
    oof["dme_true"] = np.array([labels[str(n)].dme_grade for n in oof["names"]])
    return json_safe(
        {
            "source": str(source),
            "n": len(oof["names"]),
            "plain": oof_metrics(oof, False),
            "hflip_tta": oof_metrics(oof, True),
        }
    )


def with_intervals(p_dr: np.ndarray, p_dme: np.ndarray, t_dr: np.ndarray, t_dme: np.ndarray) -> dict:
    """Grading metrics of class probabilities with the DR confusion matrix and bootstrap 95% intervals."""
    metrics = grading_metrics(p_dr, p_dme, t_dr, t_dme)
    metrics["confusion_matrix"] = confusion_matrix(t_dr, p_dr.argmax(1), NUM_DR).tolist()
    metrics["ci95"] = bootstrap_intervals(
        len(t_dr), lambda idx: grading_metrics(p_dr[idx], p_dme[idx], t_dr[idx], t_dme[idx])
    )
    return metrics


def oof_metrics(oof: dict[str, np.ndarray], tta: bool) -> dict[str, Any]:
    """OOF metrics (with bootstrap 95% intervals) after temperature scaling fitted on the OOF logits.

    With ``tta`` the logits of the image and its mirror are averaged before anything else.
    """
    logits = (oof["logits"] + oof["logits_flip"]) / 2 if tta else oof["logits"]
    t_dr, t_dme = oof["dr_true"].astype(int), oof["dme_true"].astype(int)
    dr_logits, dme_logits = logits[:, :NUM_DR], logits[:, NUM_DR:]
    temp_dr, temp_dme = fit_temperature(dr_logits, t_dr), fit_temperature(dme_logits, t_dme)
    p_dr, p_dme = softmax(dr_logits, temp_dr), softmax(dme_logits, temp_dme)
    raw_dr, raw_dme = softmax(dr_logits), softmax(dme_logits)
    diagram = reliability(p_dr, t_dr)
    folds = oof.get("fold")
    biased = class_bias_cross_fitted(logits, t_dr, t_dme, folds)
    return {
        **with_intervals(p_dr, p_dme, t_dr, t_dme),
        "tta": "horizontal flip (mean of logits)" if tta else "none",
        "temperature": {"dr": temp_dr, "dme": temp_dme},
        "ece": {
            "dr_before": expected_calibration_error(raw_dr, t_dr),
            "dr_after": expected_calibration_error(p_dr, t_dr),
            "dme_before": expected_calibration_error(raw_dme, t_dme),
            "dme_after": expected_calibration_error(p_dme, t_dme),
            **(
                {
                    "dr_after_cross_fitted": cross_fitted_ece(dr_logits, t_dr, folds),
                    "dme_after_cross_fitted": cross_fitted_ece(dme_logits, t_dme, folds),
                }
                if folds is not None and len(np.unique(folds)) > 1
                else {}
            ),
            "dr_after_if_calibrated": ece_if_calibrated(p_dr, t_dr),
            "bins": 10,
            "note": "after: temperature fitted on the same OOF logits it is scored on (one parameter per "
            "head); after_cross_fitted: each fold scored with a temperature fitted on the other folds only; "
            "dr_after_if_calibrated: the ECE a perfectly calibrated grader with the same confidences shows "
            "on these images (median, 95th percentile of 2000 draws) and the share of draws at or above "
            "the observed one (workbench.calibration.ece_if_calibrated)",
        },
        **({"class_bias_cross_fitted": biased} if biased else {}),
        "reliability_dr": {
            "counts": diagram.counts.tolist(),
            "confidence": [None if np.isnan(v) else float(v) for v in diagram.confidence],
            "accuracy": [None if np.isnan(v) else float(v) for v in diagram.accuracy],
        },
    }


def cross_fitted_ece(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> float:
    """ECE after temperature scaling where each fold's temperature is fitted on the other folds' logits:
    the calibration a user gets from a temperature that never saw the image (the in-sample "after"
    figure fits and scores on the same logits)."""
    labels, folds = np.asarray(labels, int), np.asarray(folds)
    probs = np.zeros(logits.shape, np.float64)
    for fold in np.unique(folds):
        held = folds == fold
        probs[held] = softmax(logits[held], fit_temperature(logits[~held], labels[~held]))
    return expected_calibration_error(probs, labels)


def class_bias_cross_fitted(
    logits: np.ndarray, t_dr: np.ndarray, t_dme: np.ndarray, folds: np.ndarray | None
) -> dict[str, Any] | None:
    """What temperature with class biases (``workbench.calibration.fit_temperature_bias``) would give,
    measured honestly: each fold's logits calibrated with ``T`` and ``b`` fitted on the other folds only,
    the pooled predictions scored. Unlike temperature alone the biases move the arg-max, so every metric
    may change. None without folds, where some fold's complement lacks a class (nothing to fit), or where
    the logits rank the classes backwards (no positive temperature).
    """
    if folds is None or len(np.unique(folds)) < 2:
        return None
    heads = ((logits[:, :NUM_DR], t_dr), (logits[:, NUM_DR:], t_dme))
    probs = [np.zeros(head.shape, np.float64) for head, _ in heads]
    for fold in np.unique(folds):
        held = folds == fold
        for out, (head, truth) in zip(probs, heads, strict=True):
            try:
                temperature, bias = fit_temperature_bias(head[~held], truth[~held])
            except ValueError:  # a class missing from the other folds, backwards logits, or no convergence
                return None
            out[held] = softmax(head[held] / temperature + bias)
    metrics = grading_metrics(probs[0], probs[1], t_dr, t_dme)
    return {
        **metrics,
        "dr_ece": expected_calibration_error(probs[0], t_dr),
        "dme_ece": expected_calibration_error(probs[1], t_dme),
        "note": "not applied at inference: softmax(logits / T + b) per head, each fold with T and b fitted "
        "(NLL) on the other folds only; compare with the temperature-only figures and dr_after_cross_fitted",
    }


def oof_summary(folds: int, oof: dict[str, np.ndarray], command: str) -> dict[str, Any]:
    """Plain and flip-TTA OOF metrics of ``oof`` with the fold sizes (``oof.json``, the ship step)."""
    return {
        "folds": folds,
        "n": int(len(oof["names"])),
        "fold_sizes": np.bincount(oof["fold"], minlength=folds).tolist(),
        "plain": oof_metrics(oof, tta=False),
        "hflip_tta": oof_metrics(oof, tta=True),
        "command": command,
    }


def teacher_comparison(teacher_model: str, oof: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """The per-fold teacher (``--teacher-model .../fold{fold}``) on the same held-out images as the
    student, from the teacher run's ``oof.npz``, and the paired student - teacher difference."""
    if "{fold}" not in teacher_model:
        return None
    source = Path(teacher_model).parent / "oof.npz"
    if not source.is_file():
        return None
    with np.load(source, allow_pickle=False) as arrays:
        row = {str(n): i for i, n in enumerate(arrays["names"])}
        missing = [str(n) for n in oof["names"] if str(n) not in row]
        if missing:
            raise ValueError(f"{source}: no teacher prediction for {len(missing)} images: {missing[:5]}")
        rows = [row[str(n)] for n in oof["names"]]
        teacher = arrays["logits"][rows]
        if not np.array_equal(arrays["fold"][rows], oof["fold"]):
            # the teacher of fold k must not have trained on fold k: same folds, same fold seed
            raise ValueError(
                f"{source}: the teacher's folds differ from the student's (--folds, --fold-seed or --seed)"
            )
    t_dr, t_dme = oof["dr_true"].astype(int), oof["dme_true"].astype(int)
    keys = ("dr_accuracy", "dr_qwk", "dme_accuracy", "joint_accuracy", "referable_auc")

    def figures(logits: np.ndarray, idx: np.ndarray) -> dict[str, float]:
        m = grading_metrics(
            softmax(logits[idx, :NUM_DR]), softmax(logits[idx, NUM_DR:]), t_dr[idx], t_dme[idx]
        )
        return {k: m[k] for k in keys}

    def difference(idx: np.ndarray) -> dict[str, float]:
        theirs = figures(teacher, idx)
        return {k: v - theirs[k] for k, v in figures(oof["logits"], idx).items()}

    every = np.arange(len(t_dr))
    return {
        "teacher": str(source.parent),
        "n": len(every),
        "teacher_figures": figures(teacher, every),
        "student_figures": figures(oof["logits"], every),
        "student_minus_teacher_ci95": bootstrap_intervals(len(every), difference),
        "note": "both without temperature scaling, plain images (no flip), the same held-out images",
    }
