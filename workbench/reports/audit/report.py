"""The audit report: ``audit.json`` (every figure), ``per_image.csv`` and a self-contained ``audit.html``.

The HTML embeds plotly.js once (inline, so the file opens offline, e.g. in a hospital network) and the
worst-error gallery as base64 PNGs. Figures are built here from the JSON; they are returned by
``audit_plots`` for the apps, which show them without writing anything.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from models.constants import DR_GRADE_NAMES
from workbench.reports.audit.figures import training_overlap_note

__all__ = ["audit_plots", "per_image_rows", "write_audit_report"]

_LAYOUT = {"margin": {"l": 60, "r": 20, "t": 50, "b": 50}, "height": 380, "template": "plotly_white"}


def audit_plots(figures: dict[str, Any]) -> dict[str, go.Figure]:
    """ROC, reliability, confusion matrix and per-grade recall as Plotly figures ({} if nothing graded)."""
    if "grading" not in figures:
        return {}
    plots: dict[str, go.Figure] = {}
    roc = figures["roc"]
    auc = figures["grading"]["referable_auc"]
    ci = figures["grading"]["ci95"].get("referable_auc")
    title = "Referable DR: ROC" + (f" (AUC {auc:.3f}" if auc is not None else " (AUC n/a")
    title += f", 95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ")"
    fig = go.Figure(
        go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name="ROC", line={"color": "#1f77b4"})
    )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "#999"})
    )
    for point in figures["operating_points"]:
        # a cohort of one class (a referral clinic's: every image referable) has no specificity
        if point["sensitivity"] is not None and point["specificity"] is not None:
            fig.add_trace(
                go.Scatter(
                    x=[1 - point["specificity"]],
                    y=[point["sensitivity"]],
                    mode="markers",
                    marker={"size": 10},
                    name=f"{point['name']}: t={point['threshold']:.3f}",
                )
            )
    fig.update_layout(title=title, xaxis_title="1 - specificity", yaxis_title="sensitivity", **_LAYOUT)
    plots["roc"] = fig
    rel = figures["calibration"]["referable"]
    centres = [(a + b) / 2 for a, b in zip(rel["edges"][:-1], rel["edges"][1:], strict=True)]
    fig = go.Figure(
        go.Bar(
            x=centres, y=rel["observed"], width=0.09, name="observed share referable", marker_color="#ff7f0e"
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="perfect calibration",
            line={"dash": "dot", "color": "#999"},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=rel["predicted"],
            y=rel["observed"],
            mode="markers",
            name="mean predicted",
            marker={"color": "#333"},
        )
    )
    fig.update_layout(
        title=f"Reliability of the referable probability (ECE {rel['ece']:.3f})",
        xaxis_title="predicted probability (bin)",
        yaxis_title="observed share referable",
        **_LAYOUT,
    )
    plots["reliability"] = fig
    matrix = np.array(figures["grading"]["confusion_matrix"])
    names = [f"{g} {n}" for g, n in enumerate(DR_GRADE_NAMES)]
    fig = go.Figure(
        go.Heatmap(z=matrix, x=names, y=names, colorscale="Blues", text=matrix, texttemplate="%{text}")
    )
    fig.update_layout(
        title="Confusion matrix (rows: truth, columns: prediction)", yaxis_autorange="reversed", **_LAYOUT
    )
    plots["confusion"] = fig
    recall = [r if r is not None else 0 for r in figures["grading"]["dr_recall_per_grade"]]
    fig = go.Figure(go.Bar(x=names, y=recall, marker_color="#2ca02c"))
    fig.update_layout(title="Recall per DR grade", yaxis_range=[0, 1], **_LAYOUT)
    plots["recall"] = fig
    return plots


def per_image_rows(graded: list, seen: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per labelled image: truth, prediction, probabilities, agreement, quality, error, and
    whether the grader trained on that file (``seen``: the figures' ``seen_in_training``; None: unknown)."""
    trained_on, unknown = (set((seen or {}).get(k, [])) for k in ("images", "unknown"))
    rows = []
    for g in graded:
        row: dict[str, Any] = {
            "image": g.name,
            "dr_true": g.dr_true,
            "dme_true": "" if g.dme_true is None else g.dme_true,
            "grader_trained_on_it": "unknown" if seen is None or g.name in unknown else g.name in trained_on,
        }
        if g.p_dr is None:
            row.update({"status": "unreadable", "error": g.error})
        else:
            pred = int(np.argmax(g.p_dr))
            row.update(
                {
                    "status": "graded" if g.gradeable else "ungradeable",
                    "dr_pred": pred,
                    "dr_probability": round(float(g.p_dr[pred]), 4),
                    "referable_probability": round(float(g.p_dr[2:].sum()), 4),
                    "dme_pred": int(np.argmax(g.p_dme)),
                    "dr_agrees": pred == g.dr_true,
                    "quality_reasons": "; ".join(g.reasons),
                }
            )
        rows.append(row)
    return rows


def _png64(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _with_ci(figures: dict[str, Any], key: str) -> str:
    value = figures["grading"].get(key)
    ci = figures["grading"]["ci95"].get(key)
    return _fmt(value) + (f" <small>[{ci[0]:.3f}, {ci[1]:.3f}]</small>" if ci else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(figures: dict[str, Any], overlays: dict[str, np.ndarray], title: str) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    rate = figures.get("gradeable_rate")
    parts.append(
        f"<p id='summary'>{figures['n']} labelled images; {figures['n_graded']} graded, "
        f"{figures['n_ungradeable']} ungradeable, {figures['n_unreadable']} unreadable "
        f"(gradeable rate {_fmt(rate)}). "
        f"Grader: <code>{html.escape(str(figures.get('grader', '')))}</code>.</p>"
    )
    if note := training_overlap_note(figures):
        parts.append(f"<p id='training-overlap'><strong>{html.escape(note)}</strong></p>")
    if "grading" in figures:
        g = figures["grading"]
        parts.append("<h2>Agreement</h2>")
        parts.append(
            _table(
                [
                    "DR accuracy",
                    "DR QWK",
                    "DME accuracy",
                    "joint DR+DME",
                    "referable AUC",
                    "DR top-label ECE",
                ],
                [
                    [
                        _with_ci(figures, "dr_accuracy"),
                        _with_ci(figures, "dr_qwk"),
                        _fmt(g["dme_accuracy"]) + f" <small>(n={g['dme_labelled']})</small>",
                        _fmt(g["joint_accuracy"]),
                        _with_ci(figures, "referable_auc"),
                        _fmt(figures["calibration"]["dr_top_label_ece"]),
                    ]
                ],
            )
        )
        parts.append("<p><small>[95% bootstrap interval, 1000 resamples of the images]</small></p>")
        parts.append("<h2>Referable DR operating points</h2>")
        parts.append(
            _table(
                ["operating point", "threshold", "sensitivity", "specificity"],
                [
                    [
                        html.escape(p["name"]),
                        _fmt(p["threshold"]),
                        _fmt(p["sensitivity"]),
                        _fmt(p["specificity"]),
                    ]
                    for p in figures["operating_points"]
                ],
            )
        )
        plots = audit_plots(figures)
        first = True
        parts.append("<h2>Plots</h2><div class='plots'>")
        for name, fig in plots.items():
            parts.append(
                f"<div class='plot' id='plot-{name}'>"
                + fig.to_html(full_html=False, include_plotlyjs=first)
                + "</div>"
            )
            first = False
        parts.append("</div>")
        parts.append("<h2>Worst errors</h2><div class='gallery'>")
        for row in figures["worst_errors"]:
            image = overlays.get(row["image"])
            img = (
                f"<img alt='{html.escape(row['image'])}' src='data:image/png;base64,{_png64(image)}'>"
                if image is not None
                else ""
            )
            parts.append(
                f"<figure>{img}<figcaption>{html.escape(row['image'])}: truth {row['dr_true']}, predicted "
                f"{row['dr_pred']} (p {row['probability']:.2f}; "
                f"referable p {row['referable_probability']:.2f}); "
                f"heatmap: {html.escape(figures.get('worst_error_map', 'grader attention'))} for the "
                "predicted grade</figcaption></figure>"
            )
        parts.append("</div>")
    if figures["ungradeable"] or figures["unreadable"]:
        parts.append("<h2>Not graded</h2>")
        rows = [
            [html.escape(u["image"]), "ungradeable", html.escape("; ".join(u["reasons"]))]
            for u in figures["ungradeable"]
        ]
        rows += [
            [html.escape(u["image"]), "unreadable", html.escape(u["error"])] for u in figures["unreadable"]
        ]
        parts.append(_table(["image", "status", "reason"], rows))
    if figures.get("unlabelled_images"):
        shown = ", ".join(html.escape(n) for n in figures["unlabelled_images"][:20])
        parts.append(
            f"<p>{len(figures['unlabelled_images'])} image(s) in the folder have no label row and were "
            f"not audited: {shown}</p>"
        )
    if figures.get("label_rows_without_image"):
        rows = figures["label_rows_without_image"]
        shown = "; ".join(html.escape(r) for r in rows[:20]) + ("; ..." if len(rows) > 20 else "")
        parts.append(
            f"<p>{len(rows)} label row(s) name no photograph in the folder and were ignored: {shown}</p>"
        )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.plot{display:inline-block;width:560px}"
        "figure{display:inline-block;margin:4px;width:300px;vertical-align:top}img{width:300px}"
        "@media(max-width:600px){.plot,figure,img{width:100%}}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width'>"
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(parts)}"
        "<p>DR Workbench audit: research and audit tool, not a medical device.</p></body></html>"
    )


def write_audit_report(
    figures: dict[str, Any],
    graded: list,
    overlays: dict[str, np.ndarray],
    out: Path,
    html_path: Path | None = None,
) -> dict[str, Path]:
    """Write ``audit.json`` and ``per_image.csv`` into ``out`` (and the HTML to ``html_path`` when given)."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / "audit.json", "csv": out / "per_image.csv"}
    written["json"].write_text(json.dumps(figures, indent=1))
    rows = per_image_rows(graded, figures.get("seen_in_training"))
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with written["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    if html_path is not None:
        Path(html_path).parent.mkdir(parents=True, exist_ok=True)
        Path(html_path).write_text(_html(figures, overlays, "DR Workbench audit"))
        written["html"] = Path(html_path)
    return written
