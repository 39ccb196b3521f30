"""Grade a labelled image set: one pass over the files, in batches, exactly as ``drwb evaluate`` does.

Each image is decoded at reduced size (``min_side`` = the grading crop), cropped to its field of view
at 512 px, judged for quality and graded. An unreadable file becomes a row with its error; the audit
goes on. The IDRiD-layout evaluation calls ``grade_images`` too, so both give the same figures for the
same images by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.fundus import prepare_fundus
from workbench.io.image_io import ImageLoadError, load_image
from workbench.predictors import GRADING_CROP, GraderPredictor
from workbench.reports.audit.figures import audit_figures
from workbench.reports.audit.labels import LabelledImage, Labels

__all__ = ["GradedImage", "grade_images", "run_audit"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GradedImage:
    """One labelled image after grading. ``p_dr`` / ``p_dme`` are None when the file could not be read."""

    name: str
    path: Path
    dr_true: int
    dme_true: int | None
    gradeable: bool
    reasons: tuple[str, ...]
    error: str
    p_dr: np.ndarray | None
    p_dme: np.ndarray | None
    crop: np.ndarray | None = None  # kept only when asked (gallery of worst errors)


def grade_images(
    predictor: GraderPredictor,
    images: Sequence[LabelledImage],
    batch: int = 16,
    progress: Progress | None = None,
    keep_crops: bool = False,
) -> list[GradedImage]:
    """Grade every image (batches of ``batch``); ``progress(done, total)`` after each batch."""
    out: list[GradedImage] = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        prepared, errors = [], []
        for item in chunk:
            try:
                prepared.append(prepare_fundus(load_image(item.path, min_side=GRADING_CROP), GRADING_CROP))
                errors.append("")
            except (ImageLoadError, OSError) as exc:
                prepared.append(None)
                errors.append(str(exc))
        readable = [p.crop for p in prepared if p is not None]
        p_dr, p_dme = predictor.predict(readable) if readable else (np.zeros((0, 5)), np.zeros((0, 3)))
        k = 0
        for item, prep, error in zip(chunk, prepared, errors, strict=True):
            if prep is None:
                out.append(
                    GradedImage(
                        item.name, item.path, item.dr_grade, item.dme_grade, False, (), error, None, None
                    )
                )
                continue
            out.append(
                GradedImage(
                    item.name,
                    item.path,
                    item.dr_grade,
                    item.dme_grade,
                    prep.quality.gradeable,
                    tuple(prep.quality.reasons),
                    "",
                    p_dr[k],
                    p_dme[k],
                    prep.crop if keep_crops else None,
                )
            )
            k += 1
        if progress is not None:
            progress(min(start + batch, len(images)), len(images))
    return out


def run_audit(
    workbench,
    labels: Labels,
    worst: int = 8,
    progress: Progress | None = None,
    grader: str | None = None,
) -> tuple[dict[str, Any], list[GradedImage], dict[str, np.ndarray]]:
    """Grade ``labels`` with the workbench's grader; returns (figures, graded rows, worst-error heatmaps).

    The worst errors (largest grade distance, then most confident) get one explanation each: the
    grader's own attention map for the predicted grade (the cheapest honest view of where it looked).
    """
    from workbench.reports.render import heatmap_overlay
    from workbench.targets import GradeTarget

    predictor = workbench.grader_predictor(grader) if grader else workbench.grader
    graded = grade_images(predictor, labels.images, progress=progress, keep_crops=True)
    figures = audit_figures(graded, worst=worst)
    figures["labels_format"] = labels.format
    figures["unlabelled_images"] = list(labels.unlabelled)
    figures["grader"] = predictor.card.weights.removesuffix(".safetensors")
    overlays: dict[str, np.ndarray] = {}
    by_name = {g.name: g for g in graded}
    for row in figures["worst_errors"]:
        item = by_name[row["image"]]
        heat = workbench.explain(item.crop, ["attention"], GradeTarget(row["dr_pred"]), grader=grader)
        overlays[item.name] = heatmap_overlay(item.crop, heat["attention"])
        figures["worst_error_map"] = heat["attention"].named("grader attention")
    return figures, graded, overlays
