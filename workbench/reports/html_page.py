"""The self-contained HTML page of one analysis: tables of every number and the overlays as base64 PNGs,
so the page opens offline and can be mailed as one file (``report.write_report`` writes it)."""

from __future__ import annotations

import html
from typing import Any

from models.constants import DME_NAMES, DR_GRADE_NAMES, lesion_by_code
from workbench.analysis.lesion_trust import RELIABILITY_FLOOR
from workbench.analysis.result import grade_uncertainty_note, referral_note
from workbench.landmarks.laterality import Laterality
from workbench.quality import forced_grade_warning, measure_rows

__all__ = ["LESION_COLUMNS", "report_html"]

# the lesion table everywhere it is shown (report, Gradio, Streamlit); ``report.lesion_rows`` fills it
LESION_COLUMNS = [
    "lesion",
    "count",
    "area (px)",
    "area (% of field)",
    "area (disc areas)",
    "validated AUPR",
    "reliability",
]


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v, 0 if digits == 0 else digits) for v in value)
    return html.escape(str(value))


_GREYED = ' style="color: #9e9e9e; font-style: italic"'  # a lesion type below the reliability floor


def _table(
    caption: str, header: list[str], rows: list[list[Any]], digits: int = 3, greyed: list[bool] | None = None
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    greyed = greyed or [False] * len(rows)
    body = "".join(
        f"<tr{_GREYED if grey else ''}>" + "".join(f"<td>{_cell(c, digits)}</td>" for c in row) + "</tr>"
        for row, grey in zip(rows, greyed, strict=True)
    )
    return (
        f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _tables(data: dict[str, Any]) -> str:
    """The report's numbers as readable tables (the full JSON stays beside it as report.json)."""
    parts = []
    if data.get("graded"):
        parts.append(
            _table(
                "DR grade probabilities",
                ["grade", "name", "probability"],
                [[g, DR_GRADE_NAMES[g], p] for g, p in enumerate(data["dr_probabilities"])],
            )
        )
        parts.append(
            _table(
                "DME risk probabilities",
                ["risk", "name", "probability"],
                [[g, DME_NAMES[g], p] for g, p in enumerate(data["dme_probabilities"])],
            )
        )
        parts.append(
            _table(
                "Lesions (segmenter; the optic disc is listed with the landmarks). Types whose validated "
                f"AUPR is below the reliability floor of {RELIABILITY_FLOOR:.2f} (greyed) are not findings, "
                "and no detector's 0 proves there are none.",
                LESION_COLUMNS,
                [
                    [
                        f"{lesion_by_code(code).name} ({code})",
                        v["count"],
                        round(v["area_px"]),  # whole pixels, as the apps show them (report.lesion_rows)
                        v.get("area_percent_of_field"),
                        v.get("area_disc_areas"),
                        v.get("validated_aupr"),
                        "reliable" if v.get("reliable") else v.get("reliability", "n/a"),
                    ]
                    for code, v in data["lesions"].items()
                    if code != "OD"
                ],
                digits=3,
                greyed=[v.get("reliable") is False for code, v in data["lesions"].items() if code != "OD"],
            )
        )
        od, fovea = data["optic_disc"], data["fovea"]
        parts.append(
            _table(
                "Landmarks (original pixels)",
                ["landmark", "x", "y", "confidence", "state"],
                [  # whole pixels and two-decimal confidences, as the Analyze summary gives them
                    [
                        "optic disc",
                        round(od["xy"][0]),
                        round(od["xy"][1]),
                        f"{od['confidence']:.2f}",
                        f"doubtful: {od['doubt']}" if od.get("doubt") else "trusted",
                    ],
                    [
                        "fovea",
                        round(fovea["xy"][0]),
                        round(fovea["xy"][1]),
                        f"{fovea['confidence']:.2f} (detector)",
                        f"doubtful: {fovea['doubt']}"
                        if fovea.get("doubt")
                        else "trusted: it passes the anatomy checks",
                    ],
                ],
            )
        )
        laterality = data.get("laterality")
        if laterality:
            parts.append(_laterality_paragraph(laterality))
        if "fovea_dependent" in data:
            parts.append(
                "<p class='doubt'>ETDRS grid, lesions by region, DME rule check: "
                f"{html.escape(data['fovea_dependent'])}</p>"
            )
        if "dme_rule_check" in data:
            check = data["dme_rule_check"]
            parts.append(
                _table(
                    "DME cross-check by the IDRiD rule (segmented exudates vs the grader's DME head)",
                    ["rule grade", "grader grade", "agrees", "nearest exudate (disc diameters from fovea)"],
                    [
                        [
                            check["rule_grade"],
                            check["grader_grade"],
                            check["agrees"],
                            check["nearest_exudate_disc_diameters"],
                        ]
                    ],
                )
            )
    if data.get("explanations"):
        keys = [
            "seconds",
            "deletion_auc",
            "insertion_auc",
            "pointing_game",
            "relevance_mass",
            "relevance_rank",
        ]
        rows = []
        for name, e in data["explanations"].items():
            cells = [e.get(k) for k in keys]
            if e.get("evidence") is False:
                cells[3:] = ["no evidence"] * 3
            label = f"{name} ({e['note']})" if e.get("note") else name
            rows.append([label, e.get("target")] + cells)
        through = {e["computed_on"] for e in data["explanations"].values() if e.get("computed_on")}
        parts.append(
            _table(
                "Explanations (deletion AUC: lower is more faithful; insertion AUC, pointing game, relevance "
                "mass / rank on lesions: higher is better)"
                + "".join(f"; explained {t}" for t in sorted(through)),
                ["method", "target", *keys],
                rows,
            )
        )
    parts.append(
        _table(
            "Image quality measures, with the limits of a gradeable photograph (as Inspect shows them)",
            ["measure", "value", "limit", "what it is"],
            [list(row) for row in measure_rows(data.get("quality_measures", {}))],
            digits=2,
        )
    )
    return "".join(parts)


def _source_line(data: dict[str, Any]) -> str:
    """What the file held and its size, e.g. "DICOM (YBR_FULL_422 8-bit, JPEG Baseline), 4288 x 2848 px"."""
    source = data.get("source") or {}
    height, width = data.get("original_size_hw", (0, 0))
    held = html.escape(str(source.get("format") or "image"))
    if source.get("mode"):
        held += f" ({html.escape(str(source['mode']))})"
    return f"{held}, {width} x {height} px"


def report_html(data: dict[str, Any], images: dict[str, str]) -> str:
    title = html.escape(str(data["file"]))
    if data.get("graded"):
        headline = (
            f"DR grade {data['dr_grade']} ({html.escape(data['dr_grade_name'])}, grade probability "
            f"{data['dr_probabilities'][data['dr_grade']]:.2f}); "
            f"{'REFERABLE' if data['referable'] else 'not referable'} (referable probability "
            f"{data['referable_probability']:.2f}); DME risk {data['dme_grade']} "
            f"({html.escape(data['dme_grade_name'])})"
        )
        note = referral_note(int(data["dr_grade"]), float(data["referable_probability"]))
        if note:
            headline += "<br>" + html.escape(note)
        if doubt := grade_uncertainty_note(data["dr_probabilities"]):
            headline += "<br>Uncertain grade: " + html.escape(doubt)
        if not data.get("gradeable", True):  # graded although the check failed: said before the grade
            headline = html.escape(forced_grade_warning(data.get("quality_reasons", []))) + "<br>" + headline
    else:
        headline = "NOT GRADEABLE: " + html.escape("; ".join(data["quality_reasons"]))
    figures = "".join(
        f'<figure><img alt="{html.escape(n)}" src="data:image/png;base64,{b}">'
        f"<figcaption>{html.escape(n)}</figcaption></figure>"
        for n, b in images.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>DR Workbench: {title}</title>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:4px;max-width:100%}"
        "img{width:384px;max-width:100%}table{border-collapse:collapse;margin:1em 0;display:block;"
        "overflow-x:auto;max-width:100%}caption{text-align:left;font-weight:bold;padding:4px 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px}@media(max-width:600px){body{margin:0.5em}}</style>"
        f"</head><body><h1>{title}</h1><p id='source'>{_source_line(data)}</p>"
        f"<h2 id='headline'>{headline}</h2>{figures}{_tables(data)}{_provenance(data)}"
        "<p>All numbers are in report.json beside this file. DR Workbench: research and audit tool, not a "
        "medical device.</p></body></html>"
    )


def _provenance(data: dict[str, Any]) -> str:
    """What produced the report: software version, profile, each model and what ran it, and when (an audit
    trail must say which grader gave a grade)."""
    runtimes = data.get("runtimes") or {}
    models = "; ".join(
        f"{html.escape(role)} {html.escape(str(name))}"
        + (f" ({html.escape(str(runtimes[role]))})" if role in runtimes else "")
        for role, name in (data.get("models") or {}).items()
    )
    when = html.escape(str(data.get("created_utc") or "n/a"))
    return (
        f"<p id='provenance'><small>Produced by {html.escape(str(data.get('software') or 'DR Workbench'))}"
        f" on {when} UTC, profile {html.escape(str(data.get('profile') or 'n/a'))}; models: {models or 'n/a'}"
        "</small></p>"
    )


def _laterality_paragraph(laterality: dict) -> str:
    """The eye, why, and the file's own label (report.json's ``laterality``), as every face says it."""
    sentence = Laterality.from_dict(laterality).sentence
    doubt = " class='doubt'" if laterality["agrees_with_file"] is False else ""
    return f"<p id='laterality'{doubt}>Eye: {html.escape(sentence)}</p>"
