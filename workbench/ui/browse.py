"""The Dataset browser's events (``/browse``, ``/browse_graded``): IDRiD's ground truth beside the
prediction, per-image Dice, IDRiD's grades and annotated landmarks. A mixin of ``Handlers``: it needs the
handlers' ``data_dir`` and ``_load`` (the analysis every face runs).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gradio as gr
import numpy as np

from models.constants import DR_GRADE_NAMES, LESIONS
from workbench.analysis import Analysis, LesionSummary, Workbench
from workbench.explain.scoring import original_masks_to_crop
from workbench.io.idrid import IDRiD, load_mask, seg_to_grading
from workbench.metrics import mask_dice, scaled_distances
from workbench.provenance import seen_in_training
from workbench.reports.render import landmarks_overlay, lesion_overlay
from workbench.ui.summary import summary_markdown

__all__ = ["BrowseHandlers"]


def _dice_markdown(analysis: Analysis, masks: dict[str, np.ndarray]) -> str:
    """Per-image Dice of each annotated type: the predicted mask against the annotation, both in the
    segmenter's crop frame (the annotation resampled there; the mask as analyze thresholds it)."""
    if analysis.lesion_transform is None:
        return ""
    truth = original_masks_to_crop(masks, analysis.lesion_transform)
    rows = ["| lesion | Dice on this image | validated AUPR |", "| --- | --- | --- |"]
    for lesion in LESIONS:
        if lesion.code not in truth or lesion.code not in analysis.lesions:
            continue
        dice = mask_dice(analysis.lesions[lesion.code].mask, truth[lesion.code] >= 0.5)
        reliability = analysis.lesion_reliability.get(lesion.code)
        aupr = f"{reliability.aupr:.2f}" if reliability and reliability.aupr is not None else "n/a"
        rows.append(f"| {lesion.name} | {'n/a' if dice is None else f'{dice:.2f}'} | {aupr} |")
    return "\n".join(rows)


class BrowseHandlers:
    """``/browse`` and ``/browse_graded``; ``data_dir`` None means no browser (the tab is not built)."""

    data_dir: Any
    workbench: Workbench  # provided by workbench.ui.handlers.Handlers

    def _load(
        self, path: str | None, force: bool = False, explain: list[str] | None = None, target=None
    ) -> Analysis:
        raise NotImplementedError("provided by workbench.ui.handlers.Handlers")

    # /browse ----------------------------------------------------------------------------------------
    def _records(self, part: str) -> list[Any]:
        """The training records of one IDRiD part ("segmentation" or "grading"); [] without a folder."""
        return getattr(IDRiD(self.data_dir), part)("train") if self.data_dir is not None else []

    def _record(self, part: str, name: str) -> Any:
        if self.data_dir is None:
            raise gr.Error("No IDRiD folder configured (start the app with --data or DRWB_DATA).")
        records = {r.name: r for r in self._records(part)}
        if name not in records:
            raise gr.Error(f"{name!r} is not a {part} image of the configured IDRiD folder")
        return records[name]

    def dataset_names(self) -> list[str]:
        return [r.name for r in self._records("segmentation")]

    def browse(self, name: str) -> tuple[Any, ...]:
        record = self._record("segmentation", name)
        analysis = self._load(str(record.image_path), force=True)
        masks = {c: load_mask(p) for c, p in record.mask_paths.items() if p is not None}
        in_crop = original_masks_to_crop(masks, analysis.crop_transform)
        # The ground truth drawn by the same renderer: an Analysis whose lesions are the annotated masks.
        truth = replace(
            analysis,
            lesions={
                c: LesionSummary(c, 0, 0.0, m, m.astype(np.float16), np.zeros((0, 2)))
                for c, m in in_crop.items()
            },
        )
        annotated = (
            "Annotated: "
            + ", ".join(record.annotated)
            + "; not annotated: "
            + (", ".join(c for c in record.mask_paths if c not in record.annotated) or "none")
        )
        return (
            lesion_overlay(truth),
            lesion_overlay(analysis),
            "\n\n".join([summary_markdown(analysis), self._truth_markdown(name), annotated])
            + "\n\n"
            + _dice_markdown(analysis, masks),
        )

    def _truth_markdown(self, name: str) -> str:
        """IDRiD's own grades for a segmentation photograph that is also a grading image."""
        grading_name = seg_to_grading(self.data_dir).get(name) if self.data_dir else None
        grades = {r.name: r for r in IDRiD(self.data_dir).grading("train")} if grading_name else {}
        if grading_name not in grades:
            return "**Ground-truth grades:** not available (not one of IDRiD's grading images)"
        truth = grades[grading_name]
        return (
            f"**Ground-truth grades** (IDRiD grading image {grading_name}): DR {truth.dr_grade} "
            f"({DR_GRADE_NAMES[truth.dr_grade]}), DME risk {truth.dme_grade}"
        )

    # /browse_graded ---------------------------------------------------------------------------------
    def grading_names(self) -> list[str]:
        return [r.name for r in self._records("grading")]

    def browse_graded(self, name: str) -> tuple[Any, ...]:
        """A grading photograph: predicted grades and landmarks beside IDRiD's (grades, disc, fovea)."""
        record = self._record("grading", name)
        dataset = IDRiD(self.data_dir)
        has_marks = dataset.has_split("localization", "train")
        mark = {r.name: r for r in dataset.localization("train")}.get(name) if has_marks else None
        analysis = self._load(str(record.image_path), force=True)
        truth = (mark.od_xy, mark.fovea_xy) if mark is not None else None
        lines = [
            summary_markdown(analysis),
            "",
            "| | predicted | IDRiD |",
            "| --- | --- | --- |",
            f"| DR grade | {analysis.dr_grade} ({DR_GRADE_NAMES[analysis.dr_grade]}) | {record.dr_grade} "
            f"({DR_GRADE_NAMES[record.dr_grade]}) |",
            f"| DME risk | {analysis.dme_grade} | {record.dme_grade} |",
        ]
        width = analysis.original_size[1]
        for label, predicted, annotated in (
            ("optic-disc centre", analysis.od_xy, mark.od_xy if mark else None),
            ("fovea centre", analysis.fovea_xy, mark.fovea_xy if mark else None),
        ):
            if predicted is None or annotated is None:
                error = "n/a"
            else:
                error = (
                    f"{float(scaled_distances([predicted], [annotated], np.array([width]))[0]):.0f} px off"
                )
            state = "annotated" if annotated else "none"
            lines.append(f"| {label} | {error} (scaled to the 4288-px IDRiD frame) | {state} |")
        seen = seen_in_training(self.workbench.grader.card, [record.image_path], [analysis.crop])
        if seen is not None and seen[0]:  # then the table is no evidence (workbench.provenance)
            lines.append(
                f"\n**The grader ({self.workbench.model_names['grader']}) trained on this photograph:** its "
                "agreement with IDRiD says little about photographs it has not seen.\n"
            )
        return landmarks_overlay(analysis, truth=truth), "\n".join(lines)
