"""The Inspect tab's work: a photograph's field of view, quality verdict (each measure beside its limit)
and the display-only enhancements, decoded at the size the analyses decode at. The ``/inspect`` endpoint.
"""

from __future__ import annotations

import gradio as gr
import numpy as np

from models.enhance import ENHANCEMENTS
from workbench.fundus import prepare_fundus
from workbench.io.image_io import ImageLoadError, load_image
from workbench.quality import measure_rows
from workbench.ui.handlers import NO_UPLOAD

__all__ = ["ENHANCEMENT_NOTES", "inspect_fundus"]

ENHANCEMENT_NOTES = {
    "none": "the field-of-view crop as the models see it",
    "ben_graham": "local average colour subtracted (Ben Graham, Kaggle DR 2015): evens out illumination, "
    "makes small dark and bright lesions stand out; for looking only, the models never see it",
    "clahe": "contrast-limited adaptive histogram equalisation of lightness only (hues kept): brings out "
    "detail in dark or flat regions; for looking only, the models never see it",
}


def inspect_fundus(path: str | None, enhancement: str, min_side: int = 512) -> tuple[np.ndarray, str]:
    """Load an uploaded file, crop its field of view, judge quality; the ``/inspect`` endpoint.

    ``min_side`` is the decoding size; the app passes the one its analyses decode at, so the quality
    measures (focus above all) are the numbers Analyze judged the photograph by.
    """
    if not path:
        raise gr.Error(NO_UPLOAD)
    if enhancement not in ENHANCEMENTS:
        raise gr.Error(f"unknown enhancement {enhancement!r}; valid: {', '.join(ENHANCEMENTS)}")
    try:
        image = load_image(path, min_side=min_side)
    except ImageLoadError as exc:
        raise gr.Error(str(exc)) from exc
    prepared = prepare_fundus(image, 512)
    quality = prepared.quality
    verdict = "Gradeable" if quality.gradeable else "NOT gradeable: " + "; ".join(quality.reasons)
    rows = ["| measure | value | limit | what it is |", "| --- | --- | --- | --- |"]
    rows += [
        f"| {key} | {value:.2f} | {limit} | {meaning} |"
        for key, value, limit, meaning in measure_rows(quality.measures)
    ]
    lines = [
        f"**Quality:** {verdict}",
        f"**Original size:** {image.original_size[1]} x {image.original_size[0]} px ({image.source_format}, "
        f"{image.source_mode})",
        f"**Field of view:** centre ({prepared.fov.cx:.0f}, {prepared.fov.cy:.0f}), "
        f"radius {prepared.fov.radius:.0f} px",
        f"**Enhancement:** {enhancement}: {ENHANCEMENT_NOTES.get(enhancement, '')}",
        "\n".join(rows),
    ]
    return ENHANCEMENTS[enhancement](prepared.crop), "\n\n".join(lines)
