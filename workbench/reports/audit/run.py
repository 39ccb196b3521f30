"""Grade a labelled image set: one pass over the files, in batches, exactly as ``drwb evaluate`` does.

Each image is decoded at reduced size (``min_side`` = the grading crop), cropped to its field of view
at 512 px, judged for quality and graded. An unreadable file becomes a row with its error; the audit
goes on. The IDRiD-layout evaluation calls ``grade_images`` too, so both give the same figures for the
same images by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.fundus import prepare_fundus
from workbench.io.image_io import ImageLoadError, load_image
from workbench.predictors import GRADING_CROP, GraderPredictor
from workbench.provenance import seen_in_training
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
    lanes: int | None = None,
) -> list[GradedImage]:
    """Grade every image, in order; ``progress(done, total)`` after each ``batch`` images.

    Each photograph is decoded, prepared and graded by one of ``lanes`` threads (default
    ``predictor.lanes``: one per core when its grader runs in ONNX Runtime, ``OnnxForward.concurrent``,
    else 1), so decoding and the networks fill every core; the probabilities are those of grading the
    photographs one by one.
    """

    lanes = max(1, min(predictor.lanes if lanes is None else lanes, len(images)))

    def grade(item: LabelledImage) -> GradedImage:
        try:
            prep = prepare_fundus(load_image(item.path, min_side=GRADING_CROP), GRADING_CROP)
        except (ImageLoadError, OSError) as exc:
            return GradedImage(
                item.name, item.path, item.dr_grade, item.dme_grade, False, (), str(exc), None, None
            )
        p_dr, p_dme = predictor.predict([prep.crop], concurrent=lanes > 1)
        return GradedImage(
            item.name,
            item.path,
            item.dr_grade,
            item.dme_grade,
            prep.quality.gradeable,
            tuple(prep.quality.reasons),
            "",
            p_dr[0],
            p_dme[0],
            prep.crop if keep_crops else None,
        )

    out: list[GradedImage] = []
    with ExitStack() as stack:
        pool = None
        if lanes > 1:  # the lane session lives while this folder is graded (a server keeps none after)
            stack.enter_context(predictor.grading_lanes())
            pool = stack.enter_context(ThreadPoolExecutor(lanes, thread_name_prefix="grade"))
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            out.extend(pool.map(grade, chunk) if pool is not None else map(grade, chunk))
            if progress is not None:  # from the calling thread, as before
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
    seen = seen_in_training(predictor.card, [g.path for g in graded], [g.crop for g in graded])
    figures["seen_in_training"] = None  # unknown: the card does not record its training files
    if seen is not None:
        names = [g.name for g, s in zip(graded, seen, strict=True) if s]
        unknown = [g.name for g, s in zip(graded, seen, strict=True) if s is None]  # unreadable files
        figures["seen_in_training"] = {"n": len(names), "images": names, "unknown": unknown}
        unseen = [g for g, s in zip(graded, seen, strict=True) if s is False]
        if names and unseen:  # the honest figures: on the photographs it never trained on
            figures["grading_not_trained_on"] = audit_figures(unseen, worst=0).get("grading")
    figures["labels_format"] = labels.format
    figures["unlabelled_images"] = list(labels.unlabelled)
    figures["label_rows_without_image"] = list(labels.without_image)
    figures["grader"] = predictor.card.weights.removesuffix(".safetensors")
    overlays: dict[str, np.ndarray] = {}
    by_name = {g.name: g for g in graded}
    for row in figures.get("worst_errors", []):  # none when nothing could be graded
        item = by_name[row["image"]]
        heat = workbench.explain(item.crop, ["attention"], GradeTarget(row["dr_pred"]), grader=grader)
        overlays[item.name] = heatmap_overlay(item.crop, heat["attention"])
        figures["worst_error_map"] = heat["attention"].named("grader attention")
    return figures, graded, overlays
