"""Batch analysis behind ``drwb analyze``: many files in, one report folder each, a summary CSV.

Inputs may be files, folders (searched for images, not recursively) or glob patterns. A file that fails
(corrupt, not an image, too large) gets an error row in the summary and the batch goes on.
"""

from __future__ import annotations

import csv
import glob
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from workbench.analysis import Workbench
from workbench.analysis.result import grade_uncertainty_note
from workbench.explain.explainers import ExplainableModel
from workbench.explain.explainers.budget import release_freed_memory
from workbench.explain.scoring import (
    ExplanationScore,
    lesion_union_in_input,
    pointing_tolerance,
    score_heatmap,
)
from workbench.inference import model_lock
from workbench.io.image_io import ImageLoadError, is_image_file
from workbench.reports.report import write_report
from workbench.targets import GradeTarget, Target

__all__ = [
    "SUMMARY_FIELDS",
    "analyze_files",
    "analyze_one",
    "batch_tally",
    "content_sha256",
    "eye_columns",
    "grade_columns",
    "expand_inputs",
    "report_folders",
    "score_analysis",
    "unread_message",
]

log = logging.getLogger(__name__)
SUMMARY_FIELDS = (
    "file",
    "sha256",
    "status",
    "error",
    "gradeable",
    "dr_grade",
    "referable",
    "referable_probability",
    "dme_grade",
    "MA",
    "HE",
    "EX",
    "SE",
    "dme_rule_grade",
    "dme_rule_agrees",
    "report",
    "quality_reasons",  # columns added later go at the end, so readers by position keep working
    "grader",  # the run's grader, on error rows too (a resumed Ray run refuses to mix two)
    "eye",  # right / left / undetermined from the landmarks (workbench.landmarks.laterality)
    "eye_file_says",  # right / left from the file's DICOM tag or name; empty when it names no eye
    "eye_agrees_with_file",  # True / False; empty when either says nothing
    "dr_grade_probability",  # the probability of dr_grade itself
    "grade_uncertain",  # the two likeliest grades when neither reaches UNCERTAIN_BELOW (else empty)
)


def _manifest(path: Path) -> list[Path]:
    """Image paths from a CSV manifest's ``image`` column (relative paths: to the CSV's folder)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if "image" not in (reader.fieldnames or []):
            raise ValueError(f"manifest {path} has no 'image' column (columns: {reader.fieldnames})")
        return [path.parent / row["image"].strip() for row in reader if row["image"].strip()]


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files, folders, globs and CSV manifests -> sorted unique paths. A folder contributes its image
    files; a ``.csv`` file contributes the paths in its ``image`` column."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.suffix.lower() == ".csv" and path.is_file():
            found.extend(_manifest(path))
        elif path.is_dir():
            found.extend(p for p in sorted(path.iterdir()) if is_image_file(p))
        elif any(ch in item for ch in "*?["):
            found.extend(Path(p) for p in sorted(glob.glob(item)))
        else:
            found.append(path)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise FileNotFoundError(f"no images found in {list(inputs)}")
    return unique


def score_analysis(
    workbench: Workbench, analysis, target: Target, grader: str | None = None
) -> dict[str, ExplanationScore]:
    """Faithfulness and localisation (on the segmenter's lesions) of every heatmap of ``analysis``.

    ``grader`` must name the grader the heatmaps were computed on (None: the workbench's default):
    deletion and insertion are measured on that same model.
    """
    predictor = workbench.grader_predictor(grader) if grader else workbench.grader
    module, card, _ = predictor.explained(analysis.crop)  # an ensemble: the member its maps came from
    model = ExplainableModel(module, card)
    tensor = predictor.input_tensor(analysis.crop, card)  # the member's own input size
    lesions = {code: s.mask for code, s in analysis.lesions.items()}
    size = card.input_size
    mask = lesion_union_in_input(lesions, size)
    tolerance = pointing_tolerance(analysis.crop_transform, size)
    scores = {}
    for name, heat in analysis.heatmaps.items():
        with model_lock(module):  # not while an explainer has hooks on it
            scores[name] = score_heatmap(model, tensor, heat, target, mask, tolerance=tolerance)
        release_freed_memory()
    return scores


def content_sha256(path: Path) -> str:
    """sha256 of a file's bytes ("" when it cannot be read): the key that makes batch runs resumable."""
    from models.hashing import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return ""


def _row(
    path: Path,
    data: dict[str, Any] | None,
    error: str = "",
    report: str = "",
    sha256: str = "",
    grader: str = "",
) -> dict[str, Any]:
    row: dict[str, Any] = {key: "" for key in SUMMARY_FIELDS}
    row.update(
        {
            "file": str(path),
            "sha256": sha256,
            "status": "error" if error else "ok",
            "error": error,
            "report": report,
            "grader": grader,
        }
    )
    if data:
        row["gradeable"] = data["gradeable"]
        row["quality_reasons"] = "; ".join(data.get("quality_reasons", []))
        for key in ("dr_grade", "referable", "dme_grade"):
            row[key] = data.get(key, "")
        for code in ("MA", "HE", "EX", "SE"):
            row[code] = data.get("lesions", {}).get(code, {}).get("count", "")
        check = data.get("dme_rule_check", {})
        row["dme_rule_grade"], row["dme_rule_agrees"] = check.get("rule_grade", ""), check.get("agrees", "")
        row.update(eye_columns(data.get("laterality")))
        row.update(grade_columns(data))
    return row


def grade_columns(data: Mapping[str, Any]) -> dict[str, Any]:
    """The shown grade's probability, the referable probability (as report.json has them: an AUC computed
    from summary.csv gets no ties from rounding) and, when the grade's is below ``UNCERTAIN_BELOW``, the two
    likeliest grades (``grade_uncertainty_note``), from report.json's dict; empty when nothing was graded."""
    probabilities = data.get("dr_probabilities")
    if not probabilities or data.get("dr_grade") is None:
        return {"dr_grade_probability": "", "referable_probability": "", "grade_uncertain": ""}
    return {
        "dr_grade_probability": float(probabilities[int(data["dr_grade"])]),
        "referable_probability": float(data["referable_probability"]),
        "grade_uncertain": grade_uncertainty_note(np.asarray(probabilities)) or "",
    }


def eye_columns(laterality: dict | None) -> dict[str, Any]:
    """summary.csv's eye columns from report.json's ``laterality`` (all empty when nothing was graded)."""
    if not laterality:
        return {"eye": "", "eye_file_says": "", "eye_agrees_with_file": ""}
    agrees = laterality["agrees_with_file"]
    return {
        "eye": laterality["eye"] or "undetermined",
        "eye_file_says": laterality["file_says"] or "",
        "eye_agrees_with_file": "" if agrees is None else agrees,
    }


def _said(value: Any) -> bool:
    """A summary cell's truth, as written (True) or read back from summary.csv ("True")."""
    return str(value) == "True"


def batch_tally(rows: Iterable[Mapping[str, Any]]) -> str:
    """A run at a glance, from its summary rows (``_row``'s, or summary.csv read back: the local, Ray and
    Batch-tab files share these columns): how many photographs were read, could not be read, were not
    gradeable, are referable, carry a DME risk, and whose eye disagrees with the file's own label."""
    rows = list(rows)
    errors = sum(row["status"] == "error" for row in rows)
    parts = [f"{len(rows)} photograph{'s' * (len(rows) != 1)}: {len(rows) - errors} analysed"]
    if errors:
        parts[0] += f", {errors} could not be read"
    counts = {
        "not gradeable": sum(row["status"] == "ok" and not _said(row["gradeable"]) for row in rows),
        "referable DR": sum(_said(row["referable"]) for row in rows),
        "DME risk 1-2": sum(str(row["dme_grade"]) in ("1", "2") for row in rows),
    }
    parts += [f"{n} {what}" for what, n in counts.items()]
    mismatches = sum(str(row["eye_agrees_with_file"]) == "False" for row in rows)
    if mismatches:
        parts.append(f"{mismatches} eye MISMATCH{'ES' * (mismatches != 1)} with the file's own label")
    return " · ".join(parts)


def report_folders(paths: Sequence[Path]) -> list[str]:
    """The report folder of each input, in order: its stem; where inputs share a stem (``eye.dcm`` and
    ``eye.png``), its whole name; where whole names collide too (``a/eye.png``, ``b/eye.png``), the name
    with a counter. Computed over a whole run, so no report overwrites another."""
    stems = Counter(Path(p).stem for p in paths)
    wanted = [Path(p).stem if stems[Path(p).stem] == 1 else Path(p).name for p in paths]
    repeated = Counter(wanted)
    used: set[str] = set()
    folders = []
    for name in wanted:
        k = 1
        folder = f"{name}-1" if repeated[name] > 1 else name
        while folder in used:
            k += 1
            folder = f"{name}-{k}"
        used.add(folder)
        folders.append(folder)
    return folders


def analyze_one(
    workbench: Workbench,
    path: Path,
    out: Path,
    explain: Sequence[str] = (),
    target: Target | None = None,
    score: bool = True,
    sha256: str | None = None,
    folder: str | None = None,
) -> dict[str, Any]:
    """Analyze one file into ``out/<folder>/`` (default: its stem; ``report_folders`` names a run's) and
    return its summary row (an error row when it fails).

    Shared by the local engine (below) and the Ray engine (``workbench.engines.ray_engine``), so both
    write the same reports and rows.
    """
    digest = content_sha256(Path(path)) if sha256 is None else sha256
    grader = workbench.model_names["grader"]
    try:
        analysis = workbench.analyze(path, explain=explain, target=target)
    except (ImageLoadError, OSError) as exc:  # the file would not read: the batch goes on (a report that
        # cannot be written below is the run's problem, not this file's, and stops it)
        log.warning("%s: %s", path, exc)
        message = unread_message(Path(path).name, exc)
        return _row(Path(path), None, error=message, sha256=digest, grader=grader)
    chosen = target or (GradeTarget(analysis.dr_grade) if analysis.graded else None)
    scores = score_analysis(workbench, analysis, chosen) if score and analysis.heatmaps else None
    where = out / (folder or Path(path).stem)
    data = write_report(analysis, where, scores)
    return _row(Path(path), data, report=str(where / "report.html"), sha256=digest, grader=grader)


def unread_message(name: str, exc: Exception) -> str:
    """A file's error row: a load error names the file already; an OSError (a file gone or unreadable)
    gets the name and its reason only, not the path it had on a server."""
    if isinstance(exc, ImageLoadError):
        return str(exc)
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{name}: {reason}"


def analyze_files(
    workbench: Workbench,
    inputs: Sequence[str],
    out: Path,
    explain: Sequence[str] = (),
    target: Target | None = None,
    score: bool = True,
) -> list[dict[str, Any]]:
    """Analyze every input into ``out/<folder>/`` (``report_folders``) and write ``out/summary.csv``;
    returns the summary rows."""
    paths = expand_inputs(inputs)  # nothing to analyse: said before any folder is made
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        analyze_one(workbench, path, out, explain, target, score, folder=folder)
        for path, folder in tqdm(
            zip(paths, report_folders(paths), strict=True), total=len(paths), desc="analyze", unit="image"
        )
    ]
    with (out / "summary.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows
