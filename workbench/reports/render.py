"""Pure rendering: an ``Analysis`` in, numpy RGB images and Plotly figures out; nothing is shown here.

As captum keeps ``visualization.py`` apart from attribution code, these functions only draw. Lesion
colours come from ``models.constants.LESIONS`` so every view uses the same colour per lesion type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import plotly.graph_objects as go

from models.constants import DME_NAMES, DR_GRADE_NAMES, LESIONS
from workbench.analysis import Analysis
from workbench.explain.explainers import Heatmap
from workbench.explain.explanation_quality import Curves
from workbench.reports.html_page import LESION_COLUMNS

__all__ = [
    "curves_figure",
    "heatmap_overlay",
    "landmarks_overlay",
    "LESION_COLOUR_MAP",
    "hex_colour",
    "lesion_annotations",
    "lesion_overlay",
    "lesion_table_styler",
    "unreliable_label",
    "method_grid",
    "probability_figure",
]


def heatmap_overlay(
    crop: np.ndarray, heatmap: Heatmap, opacity: float = 0.5, colormap: int = cv2.COLORMAP_JET
) -> np.ndarray:
    """Blend the positive part of ``heatmap`` (scaled to [0, 1]) over ``crop``, with a colour bar on the
    right edge; RGB uint8 at crop size.

    Pixel attributions (Integrated Gradients, saliency) are a scatter of single pixels that vanishes at
    thumbnail size. The display (only the display; every score uses the raw map) is smoothed over ~1% of
    the crop and rescaled when the map is such a scatter: under ``SPARSE_SHARE`` of the pixels carry a
    third of its peak, or that smoothing keeps under ``SCATTER_PEAK`` of its peak (Integrated Gradients on
    IDRiD_001: 1.4% of the pixels, 0.31 of the peak, a faint speckle before; saliency 0.75; attention,
    Grad-CAM, Occlusion and SmoothGrad 0.99-1.0, left as they are).
    """
    heat = cv2.resize(heatmap.normalised(), (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    smooth = cv2.GaussianBlur(heat, (0, 0), max(1.0, crop.shape[0] / 100))
    if (heat > 1 / 3).mean() < SPARSE_SHARE or smooth.max() < SCATTER_PEAK * heat.max():
        heat = smooth
        top = float(np.percentile(heat, 99.5))
        heat = np.clip(heat / top, 0, 1) if top > 0 else heat
    coloured = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * heat), colormap), cv2.COLOR_BGR2RGB)
    alpha = (opacity * np.clip(heat * 1.5, 0, 1))[..., None]
    out = (crop * (1 - alpha) + coloured * alpha).astype(np.uint8)
    _colour_bar(out, colormap)
    return out


SPARSE_SHARE = 0.01
SCATTER_PEAK = 0.8  # smoothing a map of blobs keeps its peak; a scatter of single pixels loses most of it


def _colour_bar(canvas: np.ndarray, colormap: int) -> None:
    """A vertical bar on the right edge: the colour scale of the evidence for the target, low to high."""
    scale = canvas.shape[0] / 512
    width, height = max(4, int(10 * scale)), int(canvas.shape[0] * 0.4)
    x0, y0 = canvas.shape[1] - width - int(6 * scale), int(canvas.shape[0] * 0.3)
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(width, 1)
    bar = cv2.cvtColor(cv2.applyColorMap(ramp, colormap), cv2.COLOR_BGR2RGB)
    canvas[y0 : y0 + height, x0 : x0 + width] = bar
    for text, y in (("high", y0 - int(4 * scale)), ("low", y0 + height + int(12 * scale))):
        size = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.35 * scale, 1)[0][0]
        cv2.putText(
            canvas,
            text,
            (canvas.shape[1] - size - int(3 * scale), y),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35 * scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )


def lesion_overlay(
    analysis: Analysis, codes: Sequence[str] | None = None, opacity: float = 0.6, legend: bool = True
) -> np.ndarray:
    """Lesion masks, one fixed colour per type (grey for a type below the reliability floor), over the
    segmenter's crop resized to the grading crop, with a legend of the types drawn (unreliable ones
    marked). Unreliable types are drawn first, so a reliable lesion stays on top where halos meet."""
    base = analysis.crop.copy()
    size = base.shape[0]
    wanted = set(codes) if codes is not None else {lesion.code for lesion in LESIONS}
    # unreliable (grey) types first, so a dilated unreliable lesion never paints over a reliable one
    for lesion in sorted(LESIONS, key=lambda lesion: not _unreliable(analysis, lesion.code)):
        summary = analysis.lesions.get(lesion.code)
        if summary is None or lesion.code not in wanted:
            continue
        mask = cv2.resize(summary.mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        if lesion.code == "OD":
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(base, contours, -1, lesion.colour, 2)
            continue
        # Small lesions are dilated for visibility; the mask itself is not changed.
        visible = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        colour = np.array(_shown_colour(analysis, lesion))
        base[visible] = (base[visible] * (1 - opacity) + colour * opacity).astype(np.uint8)
    if legend:
        shown = [lesion for lesion in LESIONS if lesion.code in wanted and lesion.code in analysis.lesions]
        entries = []
        for lesion in shown:
            label = unreliable_label(lesion.name) if _unreliable(analysis, lesion.code) else lesion.name
            entries.append((label, tuple(int(c) for c in _shown_colour(analysis, lesion))))
        if entries:
            _legend(base, entries)
    return base


def lesion_annotations(analysis: Analysis) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """(crop, [(mask at crop size, label)]) for ``gr.AnnotatedImage``-style viewers: the lesion's name,
    or "<name> (unreliable)" for a type below the reliability floor, which ``LESION_COLOUR_MAP`` draws
    in grey (a viewer that does not know a label falls back to its own palette: Gradio hue-rotates).
    Counts and the reasons are in the lesion table."""
    size = analysis.crop.shape[0]
    out = []
    for lesion in LESIONS:
        summary = analysis.lesions.get(lesion.code)
        if summary is not None and summary.mask.any():
            mask = cv2.resize(summary.mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
            label = unreliable_label(lesion.name) if _unreliable(analysis, lesion.code) else lesion.name
            out.append((mask.astype(np.float32), label))
    return analysis.crop, out


def _unreliable(analysis: Analysis, code: str) -> bool:
    """Below the reliability floor; the optic disc is anatomy, outlined (and refined) whatever its AUPR."""
    reliability = analysis.lesion_reliability.get(code)
    return code != "OD" and reliability is not None and not reliability.reliable


def _shown_colour(analysis: Analysis, lesion) -> tuple[int, int, int]:
    return UNRELIABLE_COLOUR if _unreliable(analysis, lesion.code) else tuple(lesion.colour)


def lesion_table_styler(rows: list[list[Any]]):  # -> pandas Styler
    """The lesion table (``workbench.reports.report.lesion_rows``, ``LESION_COLUMNS``) for Gradio's and
    Streamlit's tables: rows of types below the reliability floor greyed and in italics; areas to 3
    decimals, AUPR to 2, a missing value blank."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=LESION_COLUMNS)
    greyed = [str(r) not in ("reliable", "n/a") for r in frame["reliability"]]
    grey = f"color: {hex_colour(UNRELIABLE_COLOUR)}; font-style: italic"
    formats = {"area (% of field)": "{:.3f}", "area (disc areas)": "{:.3f}", "validated AUPR": "{:.2f}"}
    return frame.style.apply(lambda row: [grey if greyed[row.name] else ""] * len(row), axis=1).format(
        formats, na_rep=""
    )


def unreliable_label(name: str) -> str:
    """The label of a lesion type below the reliability floor (drawn greyed: ``LESION_COLOUR_MAP``)."""
    return f"{name} (unreliable)"


def hex_colour(rgb: Sequence[int]) -> str:
    """``(255, 40, 40)`` -> ``"#ff2828"``."""
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


UNRELIABLE_COLOUR = (158, 158, 158)  # grey: a lesion type whose masks are not findings
LESION_COLOUR_MAP = {lesion.name: hex_colour(lesion.colour) for lesion in LESIONS} | {
    unreliable_label(lesion.name): hex_colour(UNRELIABLE_COLOUR) for lesion in LESIONS
}
DISC_COLOUR = (60, 255, 60)
FOVEA_COLOUR = (255, 255, 255)
DOUBT_COLOUR = (255, 170, 0)
TRUTH_COLOUR = (255, 0, 255)
# one colour per explanation method in charts (Compare takes at most six methods)
METHOD_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _legend(canvas: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> None:
    """A small key in the lower-left corner: one coloured swatch and label per entry."""
    scale = canvas.shape[0] / 512
    line = int(round(16 * scale))
    height = line * len(entries) + int(6 * scale)
    y0 = canvas.shape[0] - height - int(4 * scale)
    box = canvas[y0 : y0 + height, : int(190 * scale)]
    box[:] = (box * 0.35).astype(np.uint8)
    for i, (label, colour) in enumerate(entries):
        y = y0 + int(4 * scale) + line * i + line // 2
        cv2.rectangle(canvas, (int(6 * scale), y - line // 3), (int(16 * scale), y + line // 3), colour, -1)
        cv2.putText(
            canvas,
            label,
            (int(22 * scale), y + line // 4),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * scale,
            colour,
            1,
            cv2.LINE_AA,
        )


def landmarks_overlay(
    analysis: Analysis,
    image: np.ndarray | None = None,
    truth: tuple[tuple[float, float] | None, tuple[float, float] | None] | None = None,
) -> np.ndarray:
    """Optic-disc and fovea markers and the ETDRS grid drawn on the grading crop, with a legend.

    A doubtful fovea is drawn as an orange question mark and gets no grid (nothing derived from it is
    shown as if it were known). ``truth`` (disc, fovea) in original pixels adds the annotated centres as
    magenta rings (the Dataset browser).
    """
    canvas = (analysis.crop if image is None else image).copy()
    if analysis.od_xy is None or analysis.fovea_xy is None:
        return canvas
    transform = analysis.crop_transform
    scale = transform.scale
    truth_entries = []
    for point in truth or ():
        if point is not None:
            x, y = transform.to_crop(np.array([point], float))[0]
            cv2.circle(canvas, (int(round(x)), int(round(y))), 9, TRUTH_COLOUR, 2, cv2.LINE_AA)
            truth_entries = [("annotated centres (IDRiD)", TRUTH_COLOUR)]
    od, fovea = transform.to_crop(np.array([analysis.od_xy, analysis.fovea_xy]))
    cv2.drawMarker(canvas, tuple(int(round(v)) for v in od), DISC_COLOUR, cv2.MARKER_CROSS, 18, 2)
    centre = tuple(int(round(v)) for v in fovea)
    if analysis.fovea_doubt is not None or analysis.etdrs is None:
        cv2.putText(
            canvas, "?", (centre[0] - 6, centre[1] + 8), cv2.FONT_HERSHEY_SIMPLEX, 0.8, DOUBT_COLOUR, 2
        )
        _legend(
            canvas,
            [("optic disc centre", DISC_COLOUR), ("fovea doubtful: no grid", DOUBT_COLOUR)] + truth_entries,
        )
        return canvas
    cv2.drawMarker(canvas, centre, FOVEA_COLOUR, cv2.MARKER_TILTED_CROSS, 14, 2)
    radii = [int(round(r * scale)) for r in analysis.etdrs.radii_px]
    for radius in radii:
        cv2.circle(canvas, centre, max(1, radius), FOVEA_COLOUR, 1, cv2.LINE_AA)
    for angle in (45, 135, 225, 315):
        direction = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
        p0 = np.array(centre) + direction * radii[0]
        p1 = np.array(centre) + direction * radii[2]
        cv2.line(canvas, tuple(int(v) for v in p0), tuple(int(v) for v in p1), FOVEA_COLOUR, 1, cv2.LINE_AA)
    _legend(
        canvas,
        [("optic disc centre", DISC_COLOUR), ("fovea + ETDRS grid (1, 3, 6 mm)", FOVEA_COLOUR)]
        + truth_entries,
    )
    return canvas


def method_grid(
    crop: np.ndarray, heatmaps: dict[str, Heatmap], columns: int = 3, tile: int = 256
) -> np.ndarray:
    """Side-by-side overlays of several methods, each captioned with its name and seconds (and its note,
    e.g. "lesion-supervised", on a second line)."""
    tiles = []
    for name, heat in heatmaps.items():
        overlay = cv2.resize(heatmap_overlay(crop, heat), (tile, tile), interpolation=cv2.INTER_AREA)
        lines = [f"{name} {heat.seconds:.2f}s"] + ([heat.note] if heat.note else [])
        for row, text in enumerate(lines):
            cv2.putText(
                overlay,
                text,
                (6, 18 + 18 * row),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
        tiles.append(overlay)
    while len(tiles) % columns:
        tiles.append(np.zeros((tile, tile, 3), np.uint8))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows) if rows else np.zeros((tile, tile, 3), np.uint8)


# Legends under the plot, one entry per row when narrow: beside the plot they squeeze it to a sliver
# in a 420-px window and cut their own labels.
NARROW_LEGEND = {"orientation": "h", "yanchor": "top", "y": -0.25, "x": 0, "xanchor": "left"}


def probability_figure(analysis: Analysis) -> go.Figure:
    """Two horizontal bar charts: DR grade and DME risk probabilities."""
    figure = go.Figure()
    if analysis.dr_probabilities is not None:
        figure.add_bar(
            y=list(DR_GRADE_NAMES), x=analysis.dr_probabilities.tolist(), orientation="h", name="DR grade"
        )
        figure.add_bar(
            y=list(DME_NAMES), x=analysis.dme_probabilities.tolist(), orientation="h", name="DME risk"
        )
    figure.update_layout(
        xaxis={"range": [0, 1], "title": "probability", "automargin": True},
        yaxis={"automargin": True},
        height=380,
        barmode="group",
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title="Grader probabilities",
        legend=NARROW_LEGEND,
    )
    return figure


def curves_figure(curves: dict[str, Curves]) -> go.Figure:
    """Deletion (dashed) and insertion (solid) curves of several methods in one chart, one colour per
    method for both of its curves (lower deletion AUC and higher insertion AUC are more faithful)."""
    figure = go.Figure()
    palette = METHOD_PALETTE
    for index, (name, curve) in enumerate(curves.items()):
        colour = palette[index % len(palette)]
        figure.add_scatter(
            x=curve.fractions,
            y=curve.deletion,
            mode="lines",
            line={"dash": "dash", "color": colour},
            legendgroup=name,
            name=f"{name} deletion (AUC {curve.deletion_auc:.2f})",  # directions: in the panel's title
        )
        figure.add_scatter(
            x=curve.fractions,
            y=curve.insertion,
            mode="lines",
            line={"color": colour},
            legendgroup=name,
            name=f"{name} insertion (AUC {curve.insertion_auc:.2f})",
        )
    figure.update_layout(
        xaxis={"title": "fraction of pixels removed / revealed", "automargin": True},
        yaxis={"title": "target probability", "range": [0, 1], "automargin": True},
        height=260 + 22 * 2 * len(curves),  # room for the legend rows under the plot
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend=NARROW_LEGEND,
    )
    return figure
