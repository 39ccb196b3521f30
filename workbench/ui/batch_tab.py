"""The Batch tab's events (``/batch`` and the tally line above its table): every uploaded photograph
analysed into an HTML report, a table row and a ``summary.csv`` row; a file that cannot be read gets an
error row and the others go on. A mixin of ``Handlers``: it needs the handlers' ``workbench``.
"""

from __future__ import annotations

import csv
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr

from workbench.analysis import Workbench
from workbench.io.image_io import ImageLoadError
from workbench.landmarks.laterality import Laterality
from workbench.reports.batch import batch_tally, eye_columns, grade_columns, report_folders, unread_message
from workbench.reports.report import write_report

__all__ = ["BATCH_COLUMNS", "BatchHandlers"]

# the Batch table's column titles (summary.csv keeps the machine names of ``Handlers.batch``)
BATCH_COLUMNS = [
    "file",
    "status",
    "gradeable",
    "DR grade",
    "referable DR",
    "DME risk",
    "fovea",
    "error",
    "why not gradeable",  # columns added later go at the end, so API readers by position keep working
    "eye",  # from the landmarks, and whether the file's own label (DICOM tag, file name) agrees
    "P(grade)",  # the probability of the DR grade shown
    "P(referable)",  # grades 2-4 together, what the referral rests on
    "uncertain grade",  # the two likeliest when no grade reaches UNCERTAIN_BELOW
]


class BatchHandlers:
    """``batch`` and ``batch_tally`` for ``Handlers``."""

    workbench: Workbench

    # /batch -----------------------------------------------------------------------------------------
    def batch(
        self,
        paths: list[str] | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom for a progress bar)
    ) -> tuple[Any, ...]:
        if not paths:
            raise gr.Error("Upload one or more fundus photographs.")
        rows, out = [], Path(tempfile.mkdtemp(prefix="drwb-batch-"))
        eyes = []  # summary.csv's file-says and agrees columns, as `drwb analyze` writes them
        grades = []  # summary.csv's grade columns, unrounded (the table rounds them)
        folders = report_folders([Path(p) for p in paths])  # eye.dcm and eye.png: two reports, not one
        for path, folder in progress.tqdm(list(zip(paths, folders, strict=True)), desc="analyzing"):
            name = Path(path).name
            try:
                analysis = self.workbench.analyze(path, name=name)
            except (ImageLoadError, OSError) as exc:  # as `drwb analyze`: the batch goes on
                rows.append([name, "error", *[None] * 5, unread_message(name, exc), *[None] * 5])
                eyes.append(list(eye_columns(None).values())[1:])
                grades.append(list(grade_columns({}).values()))
                continue
            data = write_report(analysis, out / folder)
            fovea, eye, grade = data.get("fovea") or {}, data.get("laterality"), grade_columns(data)
            eyes.append(list(eye_columns(eye).values())[1:])
            grades.append(list(grade.values()))
            rows.append(
                [
                    name,
                    "ok",
                    data["gradeable"],
                    data.get("dr_grade"),
                    data.get("referable"),
                    data.get("dme_grade"),
                    ("doubtful: " + fovea["doubt"]) if fovea.get("doubt") else ("found" if fovea else None),
                    "",
                    "; ".join(data.get("quality_reasons", [])),
                    Laterality.from_dict(eye).cell if eye else None,
                    *(  # 3 decimals in the table; summary.csv has them as report.json does
                        round(grade[key], 3) if isinstance(grade[key], float) else None
                        for key in ("dr_grade_probability", "referable_probability")
                    ),
                    grade["grade_uncertain"],
                ]
            )
        header = [
            "file",
            "status",
            "gradeable",
            "dr_grade",
            "referable",
            "dme_grade",
            "fovea",
            "error",
            "quality_reasons",
            "eye",
            "eye_file_says",
            "eye_agrees_with_file",
            "dr_grade_probability",  # columns added later go at the end, as in `drwb analyze`'s
            "referable_probability",
            "grade_uncertain",
        ]
        buffer = io.StringIO()
        lines = [row[:10] + eye + exact for row, eye, exact in zip(rows, eyes, grades, strict=True)]
        csv.writer(buffer).writerows([header, *lines])
        (out / "summary.csv").write_text(buffer.getvalue())
        archive = out / "reports.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for file in out.rglob("*"):
                if file.is_file() and file != archive:
                    zf.write(file, file.relative_to(out))
        return rows, str(out / "summary.csv"), str(archive)

    @staticmethod
    def batch_tally(summary_csv: str | None) -> str:
        """The line above the Batch table (a follow-up event, so /batch's outputs stay as they were)."""
        if not summary_csv:
            return ""
        with open(summary_csv, newline="") as handle:
            return f"**Batch:** {batch_tally(csv.DictReader(handle))}"
