"""Reports: an ``Analysis`` as JSON (every number), overlay PNGs and one self-contained HTML page.

The HTML embeds its images as base64 PNG so it opens offline and can be mailed as one file.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from models.constants import DME_NAMES, DR_GRADE_NAMES, lesion_by_code
from workbench.analysis import Analysis
from workbench.explain.scoring import ExplanationScore
from workbench.reports.html_page import LESION_COLUMNS, report_html
from workbench.reports.render import heatmap_overlay, landmarks_overlay, lesion_overlay, method_grid

__all__ = [
    "LESION_COLUMNS",
    "SUMMARY_COLUMNS",
    "analysis_to_dict",
    "lesion_rows",
    "summary_row",
    "write_report",
]

SUMMARY_COLUMNS = (
    "file",
    "quality",
    "quality_reasons",
    "dr_grade",
    "dr_probability",
    "dme_grade",
    "referable",
    "MA",
    "HE",
    "EX",
    "SE",
    "error",
    "eye",  # right / left from the landmarks, and the file's own label where it has one (MISMATCH)
)


def _num(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_num(v) for v in value.tolist()]
    if isinstance(value, np.floating | float):
        return None if not np.isfinite(value) else round(float(value), 5)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, tuple | list):
        return [_num(v) for v in value]
    return value


def lesion_rows(analysis: Analysis) -> list[list[Any]]:
    """One row per lesion type (the optic disc is anatomy, not a lesion), in ``LESION_COLUMNS`` order."""
    rows = []
    for code, summary in analysis.lesions.items():
        if code == "OD":
            continue
        q = analysis.lesion_quantities(code)
        rel = analysis.lesion_reliability.get(code)
        rows.append(
            [
                f"{lesion_by_code(code).name} ({code})",  # the legend's name; the code the CSVs use
                summary.count,
                round(q["area_px"]),
                None if q["area_percent_of_field"] is None else round(q["area_percent_of_field"], 3),
                None if q["area_disc_areas"] is None else round(q["area_disc_areas"], 3),
                None if rel is None or rel.aupr is None else round(rel.aupr, 2),
                "n/a" if rel is None else ("reliable" if rel.reliable else rel.note),
            ]
        )
    return rows


@cache
def _software() -> str:
    """ "dr-workbench 0.1.0" (the installed package's version), or the name alone when it is not installed."""
    try:
        return f"dr-workbench {metadata.version('dr-workbench')}"
    except metadata.PackageNotFoundError:
        return "dr-workbench (not installed)"


def analysis_to_dict(analysis: Analysis, scores: dict[str, ExplanationScore] | None = None) -> dict[str, Any]:
    """Every number of the analysis (and explanation scores) as plain JSON types."""
    out: dict[str, Any] = {
        "file": analysis.name,
        "original_size_hw": list(analysis.original_size),
        "source": {"format": analysis.source_format, "mode": analysis.source_mode},
        "gradeable": analysis.quality.gradeable,
        "quality_reasons": list(analysis.quality.reasons),
        "quality_measures": {k: _num(v) for k, v in analysis.quality.measures.items()},
        "field_of_view": {
            "cx": _num(analysis.fov.cx),
            "cy": _num(analysis.fov.cy),
            "radius": _num(analysis.fov.radius),
        },
        "graded": analysis.graded,
        "profile": analysis.profile,
        "models": analysis.models,
        "runtimes": analysis.runtimes,
        "timings_ms": {k: _num(v) for k, v in analysis.timings_ms.items()},
        # what produced it and when (the report's audit trail, with profile, models and runtimes above)
        "software": _software(),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }
    if analysis.graded:
        out.update(
            {
                "dr_grade": analysis.dr_grade,
                "dr_grade_name": DR_GRADE_NAMES[analysis.dr_grade],
                "dr_probabilities": _num(analysis.dr_probabilities),
                "referable": analysis.referable,
                "referable_probability": _num(analysis.referable_probability),
                "dme_grade": analysis.dme_grade,
                "dme_grade_name": DME_NAMES[analysis.dme_grade],
                "dme_probabilities": _num(analysis.dme_probabilities),
                "optic_disc": {
                    "xy": _num(analysis.od_xy),
                    "radius_px": _num(analysis.od_radius_px),
                    "confidence": _num(analysis.od_confidence),
                    "doubt": analysis.od_doubt,
                    "outline_refined": analysis.disc_outline_refined,
                },
                "fovea": {
                    "xy": _num(analysis.fovea_xy),
                    "confidence": _num(analysis.fovea_confidence),
                    "doubt": analysis.fovea_doubt,
                    "refined": analysis.fovea_refined,
                },
                "laterality": analysis.laterality.as_dict() if analysis.laterality else None,
                "lesions": {
                    code: {
                        "count": s.count,
                        **{k: _num(v) for k, v in analysis.lesion_quantities(code).items()},
                        **(
                            {
                                "validated_aupr": _num(analysis.lesion_reliability[code].aupr),
                                "reliable": analysis.lesion_reliability[code].reliable,
                                "reliability": analysis.lesion_reliability[code].note,
                            }
                            if code in analysis.lesion_reliability
                            else {}
                        ),
                    }
                    for code, s in analysis.lesions.items()
                },
                "lesions_by_etdrs_region": analysis.lesions_by_region,
            }
        )
        if analysis.fovea_doubt is not None:
            # no grid, regions or rule check: say why instead of leaving them out silently
            out["fovea_dependent"] = f"not available: fovea doubtful ({analysis.fovea_doubt})"
        if analysis.etdrs is not None:
            out["etdrs_grid"] = {
                "centre_xy": _num(analysis.etdrs.centre_xy),
                "radii_px": _num(analysis.etdrs.radii_px),
                "px_per_mm": _num(analysis.etdrs.px_per_mm),
            }
        if analysis.dme_check is not None:
            check = analysis.dme_check
            out["dme_rule_check"] = {
                "rule_grade": check.grade,
                "grader_grade": check.grader_grade,
                "agrees": check.agrees,
                "nearest_exudate_disc_diameters": _num(check.nearest_exudate_dd),
            }
    if analysis.heatmaps:
        out["explanations"] = {
            name: {
                "method": h.method,
                "note": h.note,
                **({"computed_on": h.model} if h.model else {}),
                "target": h.target,
                "signed": h.signed,
                "seconds": _num(h.seconds),
                **(
                    {k: _num(v) for k, v in scores[name].as_dict().items() if k != "method"}
                    if scores and name in scores
                    else {}
                ),
            }
            for name, h in analysis.heatmaps.items()
        }
    return out


def summary_row(analysis: Analysis | None, name: str, error: str = "") -> dict[str, Any]:
    """One table row (the viewer's and the batch's): grades, top probability, lesion counts, or the error."""
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    row.update({"file": name, "error": error or None})
    if analysis is None:
        row["quality"] = "error"
        return row
    row["quality"] = "gradeable" if analysis.quality.gradeable else "ungradeable"
    row["quality_reasons"] = "; ".join(analysis.quality.reasons) or None
    if analysis.graded:
        row.update(
            {
                "dr_grade": analysis.dr_grade,
                "dr_probability": round(float(analysis.dr_probabilities[analysis.dr_grade]), 3),
                "dme_grade": analysis.dme_grade,
                "referable": bool(analysis.referable),
                "eye": analysis.laterality.cell if analysis.laterality else None,
            }
        )
        row.update(
            {
                code: analysis.lesions[code].count
                for code in ("MA", "HE", "EX", "SE")
                if code in analysis.lesions
            }
        )
    return row


def _png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def write_report(
    analysis: Analysis, folder: Path, scores: dict[str, ExplanationScore] | None = None
) -> dict[str, Any]:
    """Write report.json, overlay PNGs and report.html into ``folder``; returns the JSON dict."""
    folder.mkdir(parents=True, exist_ok=True)
    data = analysis_to_dict(analysis, scores)
    (folder / "report.json").write_text(json.dumps(data, indent=2))
    images = {"crop": analysis.crop}
    if analysis.graded:
        images["lesions"] = lesion_overlay(analysis)
        images["landmarks"] = landmarks_overlay(analysis, lesion_overlay(analysis, legend=False))
    for name, heat in analysis.heatmaps.items():
        images[f"explain_{name}"] = heatmap_overlay(analysis.crop, heat)
    if analysis.heatmaps:
        images["explain_grid"] = method_grid(analysis.crop, analysis.heatmaps)
    encoded = {}
    for name, rgb in images.items():
        png = _png(rgb)
        (folder / f"{name}.png").write_bytes(png)
        encoded[name] = base64.b64encode(png).decode("ascii")
    (folder / "report.html").write_text(report_html(data, encoded))
    return data
