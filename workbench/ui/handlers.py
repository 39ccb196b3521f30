"""Gradio event handlers: validate the widget values, call the workbench, render, return widget values.

No tensor maths here (a face): everything numeric comes from ``Workbench`` and ``workbench.reports.render``.
User errors become ``gr.Error`` with the loader's message, so the app answers and keeps serving.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from models.constants import DME_NAMES, DR_GRADE_NAMES, LESIONS
from workbench.analysis import Analysis, Workbench
from workbench.io.image_io import SUPPORTED_FORMATS_TEXT, ImageLoadError, LoadedImage, load_image
from workbench.model_table import models_markdown
from workbench.reports.batch import (
    score_analysis,
)
from workbench.reports.render import (
    curves_figure,
    heatmap_overlay,
    landmarks_overlay,
    lesion_annotations,
    lesion_overlay,
    lesion_table_styler,
    probability_figure,
)
from workbench.reports.report import analysis_to_dict, lesion_rows, write_report
from workbench.targets import GradeTarget, parse_target
from workbench.ui.batch_tab import BATCH_COLUMNS, BatchHandlers
from workbench.ui.browse import BrowseHandlers
from workbench.ui.scores_table import score_caption, score_row
from workbench.ui.summary import summary_markdown

__all__ = [
    "BATCH_COLUMNS",
    "Handlers",
    "LONG_WORK",
    "MODEL_WORK",
    "NARROW_PX",
    "NO_UPLOAD",
    "PREVIEW_SIDE",
    "TARGET_CHOICES",
    "thumbnail",
]

# HTML reports kept for the download that follows each analysis (a few analysts' worth, ~0.5 MB each)
RECENT_REPORTS = 32

# explanation methods that read the grader itself and so explain grade targets only
GRADER_ONLY_METHODS = ("attention",)


NO_UPLOAD = f"No image uploaded: choose a fundus photograph ({SUPPORTED_FORMATS_TEXT})."
PREVIEW_SIDE = 320
NARROW_PX = 360  # panels side by side need this much each; on a narrower window they stack
# The interactive events that run the models (analyze, compare, both dataset browsers) share one queue
# group of two: the models already use both cores, and the group bounds the server's memory under many
# analysts (`drwb bench --only server`: with separate limits three such jobs ran at once, 2.70 GB peak).
# Batch and audit (minutes) get their own group of one, so they never hold every interactive slot; while
# one runs, at most three model jobs run at once.
MODEL_WORK: dict[str, Any] = {"concurrency_id": "models", "concurrency_limit": 2}
LONG_WORK: dict[str, Any] = {"concurrency_id": "long", "concurrency_limit": 1}


def thumbnail(rgb: np.ndarray, side: int) -> np.ndarray:
    """Every ``step``-th pixel so the longer side is at most about ``side`` (a preview, no resampling)."""
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / side)))
    return np.ascontiguousarray(rgb[::step, ::step])


TARGET_CHOICES: list[tuple[str, str]] = (
    [("predicted DR grade", "predicted")]
    + [(f"DR {g}: {name}", f"dr:{g}") for g, name in enumerate(DR_GRADE_NAMES)]
    + [("referable DR (>= 2)", "referable")]
    + [(f"DME {g}: {name}", f"dme:{g}") for g, name in enumerate(DME_NAMES)]
    + [(f"lesion: {lesion.name}", f"lesion:{lesion.code}") for lesion in LESIONS[:4]]
)


class Handlers(BrowseHandlers, BatchHandlers):
    """Bound to one shared ``Workbench`` (module scope in ``app.py``) and an optional IDRiD folder."""

    def __init__(self, workbench: Workbench, data_dir: Path | None = None) -> None:
        self.workbench = workbench
        self.data_dir = data_dir
        # the latest analyses' HTML reports, (upload path, forced) -> report.html, for the download that
        # follows each /analyze (``analysis_report``): written at once (~40 ms), so only a path is kept
        # (an Analysis holds its lesion maps, up to ~100 MB with the 2048-px segmenter)
        self._reports: OrderedDict[tuple[str, bool], Path] = OrderedDict()
        self._reports_lock = threading.Lock()

    def _load(
        self, path: str | None, force: bool = False, explain: list[str] | None = None, target=None
    ) -> Analysis:
        if not path:
            raise gr.Error(NO_UPLOAD)
        try:
            return self.workbench.analyze(
                path, explain=explain or [], target=target, force=force, name=Path(path).name
            )
        except (ImageLoadError, FileNotFoundError) as exc:
            raise gr.Error(str(exc)) from exc

    # upload checks ---------------------------------------------------------------------------------
    @staticmethod
    def _small(path: str | None) -> tuple[LoadedImage | None, str | None]:
        """(the upload decoded small, None) or (None, why it cannot be analysed)."""
        if not path:
            return None, NO_UPLOAD
        try:
            return load_image(path, min_side=PREVIEW_SIDE, name=Path(path).name), None
        except (ImageLoadError, FileNotFoundError) as exc:
            return None, str(exc)

    @classmethod
    def upload_problem(cls, path: str | None) -> str | None:
        """Why an upload cannot be analysed (empty, not an image, corrupt...), or None when it can."""
        return cls._small(path)[1]

    def preview(self, path: str | None) -> np.ndarray | None:
        """The photograph as uploaded, small (checked at upload: a warning names a bad file at once)."""
        if not path:
            return None
        image, problem = self._small(path)
        if image is None:
            gr.Warning(problem)
            return None
        return thumbnail(image.rgb, PREVIEW_SIDE)

    def validate_upload(self, path: str | None, *_rest: Any) -> list[Any]:
        """Event validator: a bad upload is named on the upload box and nothing runs, so the output
        panels keep no stale error badges (one message per failure)."""
        problem = self.upload_problem(path)
        return [gr.validate(problem is None, problem or "")] + [gr.validate(True, "") for _ in _rest]

    def validate_compare(self, path: str | None, target_key: str, methods: list[str] | None, *_: Any) -> list:
        """Compare's validator: the upload (as ``validate_upload``), then the methods against the target,
        at once (attention for a lesion target used to fail after the other maps' seconds, and wiped
        every panel)."""
        problem = self.upload_problem(path)
        grader_only = [m for m in methods or [] if m in GRADER_ONLY_METHODS]
        lesion = str(target_key).startswith("lesion:")
        target_problem = None
        if not methods or not 1 <= len(methods) <= 6:
            target_problem = "Pick one to six explanation methods."
        elif lesion and grader_only:
            target_problem = (
                f"{', '.join(grader_only)}: the grader's own maps explain grades, not "
                f"{parse_target(target_key).label}; untick it or pick a grade target."
            )
        return [
            gr.validate(problem is None, problem or ""),
            gr.validate(True, ""),
            gr.validate(target_problem is None, target_problem or ""),
            *(gr.validate(True, "") for _ in _),
        ]

    @classmethod
    def cleared(cls, path: str | None = None) -> tuple[Any, ...]:
        """Empty Analyze outputs (summary, plot, lesions, landmarks, table, numbers) for a new upload; when
        the upload cannot be analysed, the summary says why and stays (the warning at upload fades)."""
        problem = cls.upload_problem(path) if path else None
        summary = f"**This file cannot be analysed.** {problem}" if problem else ""
        return summary, None, None, None, None, None

    # /analyze ---------------------------------------------------------------------------------------
    def analyze(self, path: str | None, force: bool) -> tuple[Any, ...]:
        analysis = self._load(path, force)
        self._keep_report(analysis, (str(path), bool(force)))
        data = analysis_to_dict(analysis)
        if not analysis.graded:
            return summary_markdown(analysis), None, None, None, [], data
        rows = lesion_table_styler(lesion_rows(analysis))  # unreliable types greyed
        annotated = lesion_annotations(analysis)
        grid = landmarks_overlay(analysis, lesion_overlay(analysis, codes=["OD"], legend=False))
        return summary_markdown(analysis), probability_figure(analysis), annotated, grid, rows, data

    def _keep_report(self, analysis: Analysis, key: tuple[str, bool]) -> None:
        """Write ``analysis``'s HTML report for ``analysis_report``; the oldest beyond ``RECENT_REPORTS``
        are deleted (Gradio has copied any it served into its own cache)."""
        folder = Path(tempfile.mkdtemp(prefix="drwb-report-"))
        write_report(analysis, folder / Path(analysis.name).stem)
        with self._reports_lock:
            self._reports[key] = folder / Path(analysis.name).stem / "report.html"
            self._reports.move_to_end(key)
            old = [self._reports.popitem(last=False)[1] for _ in range(len(self._reports) - RECENT_REPORTS)]
        for page in old:
            shutil.rmtree(page.parent.parent, ignore_errors=True)

    def analysis_report(self, path: str | None, force: bool) -> str:
        """The HTML report (``write_report``: the pictures inside the one file) of the analysis /analyze
        made of this upload with this ``force``, for download."""
        with self._reports_lock:
            page = self._reports.get((str(path), bool(force)))
        if page is None or not page.is_file():
            raise gr.Error(
                "No analysis of this photograph to report on (or it was one of many since): run Analyze "
                "(/analyze) on it first, with the same 'grade even if the quality check fails' setting."
            )
        return str(page)

    # /compare ---------------------------------------------------------------------------------------
    def compare(
        self,
        path: str | None,
        target_key: str,
        methods: list[str],
        grader: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio finds progress tracking by this default)
    ) -> Iterator[tuple[Any, ...]]:
        """Explain with each method in turn and yield the outputs after each one, so the first maps
        appear while the slow methods still run (a generator endpoint; the client sees the last)."""
        if not methods or not 1 <= len(methods) <= 6:
            raise gr.Error("Pick one to six explanation methods.")
        analysis = self._load(path, force=True)
        if target_key == "predicted":  # the grade the explained grader predicts, said whose it is
            default = self.workbench.model_names["grader"]
            grade = analysis.dr_grade
            if grader and grader != default:
                grade = int(self.workbench.grader_predictor(grader).predict([analysis.crop])[0][0].argmax())
            target = GradeTarget(grade)
            label = f"{target.label} (predicted by {grader or default})"
        else:
            target = parse_target(target_key)
            label = target.label
        if not analysis.quality.gradeable:  # explained on request, as Analyze's "grade anyway" does
            reasons = "; ".join(analysis.quality.reasons)
            gr.Warning(f"Not gradeable ({reasons}): the grader's answer, and so every map, may mean nothing.")
            label += f" · NOT GRADEABLE: {reasons}"
        gallery, table, overlays = [], [], {"image": analysis.crop, "lesions": lesion_overlay(analysis)}
        scores: dict[str, Any] = {}
        for index, method in enumerate(methods):
            progress(index / len(methods), desc=f"{method} ({index + 1} of {len(methods)})")
            try:
                heat = self.workbench.explain(analysis.crop, [method], target, grader=grader or None)[method]
            except ValueError as exc:  # e.g. attention asked for a lesion target
                raise gr.Error(str(exc)) from exc
            name = heat.named(method)
            overlays[method] = heatmap_overlay(analysis.crop, heat)
            # an ensemble is explained through one member, the same for every method: said once
            title = label + (f" · explained {heat.model}" if heat.model else "")
            first = methods[0]
            pair = (overlays[first], overlays["lesions"])  # the slider's pair and the menus say the same
            scoring = target.arch == "grader"  # deletion / insertion need the grader's own output
            gallery.append((overlays[method], score_caption(name, heat.seconds, None, scoring=scoring)))
            table.append(score_row(name, heat.seconds, None))
            curves = curves_figure({k: v.curves for k, v in scores.items()}) if scores else None
            # the map shows now; its deletion / insertion scoring (most of the time) follows
            yield list(gallery), pair, curves, list(table), dict(overlays), title, first, "lesions"
            if not scoring:
                continue
            progress((index + 0.5) / len(methods), desc=f"scoring {method} ({index + 1} of {len(methods)})")
            started = time.perf_counter()
            one = replace(analysis, heatmaps={method: heat})
            scores.update(score_analysis(self.workbench, one, target, grader=grader or None))
            scored = time.perf_counter() - started
            gallery[-1] = (overlays[method], score_caption(name, heat.seconds, scores[method], scored))
            table[-1] = score_row(name, heat.seconds, scores[method], scored)
            curves = curves_figure({k: v.curves for k, v in scores.items()})
            yield list(gallery), pair, curves, list(table), dict(overlays), title, first, "lesions"

    @staticmethod
    def slide_menus(overlays: dict[str, np.ndarray] | None, left: str, right: str) -> tuple[Any, Any]:
        """The Left / Right menus offering exactly the images a comparison made (after ``compare``; the
        API's /compare keeps returning plain names)."""
        names = list(overlays or {}) or ["image", "lesions"]
        return tuple(gr.Dropdown(choices=names, value=v if v in names else names[0]) for v in (left, right))

    @staticmethod
    def slide(overlays: dict[str, np.ndarray] | None, left: str, right: str) -> Any:
        """The pair the menus name; before any comparison a notice, and the slider left as it is."""
        if not overlays or left not in overlays or right not in overlays:
            gr.Warning("Run a comparison first, then pick two of its images.")
            return gr.skip()
        return overlays[left], overlays[right]

    # models -----------------------------------------------------------------------------------------
    @staticmethod
    def models_markdown(folder: Path | None = None) -> str:
        return models_markdown(folder)
