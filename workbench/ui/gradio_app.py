"""Gradio workbench: layout and event wiring only (STYLE.md section 4).

This first face exposes the foundation: image loading with its clear errors, the quality verdict and the
field-of-view crop with the optional enhancements. Model-based analysis tabs join it as they land.
"""

from __future__ import annotations

import logging

import gradio as gr
import numpy as np

from models.enhance import ENHANCEMENTS
from workbench.fundus import prepare_fundus
from workbench.image_io import ImageLoadError, load_image
from workbench.synthetic import make_fundus

__all__ = ["build_demo", "inspect_fundus"]

log = logging.getLogger(__name__)
MAX_UPLOAD = "60mb"


def inspect_fundus(path: str | None, enhancement: str) -> tuple[np.ndarray, str]:
    """Load an uploaded file, crop its field of view, judge quality; the ``/inspect`` endpoint."""
    if not path:
        raise gr.Error("No image uploaded: choose a fundus photograph (JPEG, PNG, TIFF, BMP or WebP).")
    if enhancement not in ENHANCEMENTS:
        raise gr.Error(f"unknown enhancement {enhancement!r}; valid: {', '.join(ENHANCEMENTS)}")
    try:
        image = load_image(path, min_side=512)
    except ImageLoadError as exc:
        raise gr.Error(str(exc)) from exc
    prepared = prepare_fundus(image, 512)
    quality = prepared.quality
    verdict = "Gradeable" if quality.gradeable else "NOT gradeable: " + "; ".join(quality.reasons)
    lines = [
        f"**Quality:** {verdict}",
        f"**Original size:** {image.original_size[1]} x {image.original_size[0]} px ({image.source_format}, "
        f"{image.source_mode})",
        f"**Field of view:** centre ({prepared.fov.cx:.0f}, {prepared.fov.cy:.0f}), "
        f"radius {prepared.fov.radius:.0f} px",
        "**Measures:** " + ", ".join(f"{k} {v:.2f}" for k, v in quality.measures.items()),
    ]
    return ENHANCEMENTS[enhancement](prepared.crop), "\n\n".join(lines)


def _example_files(folder: str) -> list[str]:
    """Write a few synthetic fundi as examples (no patient image ships with the app)."""
    from pathlib import Path

    from PIL import Image

    paths = []
    for seed, grade in ((1, 0), (2, 2), (3, 4)):
        path = Path(folder) / f"synthetic_grade{grade}.png"
        if not path.exists():
            Image.fromarray(make_fundus(seed, size=(712, 1072), dr_grade=grade).image).save(path)
        paths.append(str(path))
    return paths


def build_demo(example_dir: str) -> gr.Blocks:
    """Build the workbench layout; ``example_dir`` receives the synthetic example images."""
    with gr.Blocks(title="DR Workbench") as demo:
        gr.Markdown(
            "# DR Workbench\nDiabetic retinopathy fundus analysis: quality, field of view, enhancement."
        )
        with gr.Row():
            with gr.Column():
                # gr.File, not gr.Image: gr.Image decodes the upload itself and turns a corrupt file into a
                # generic error; our loader names the problem (truncated, not an image, too large...).
                upload = gr.File(label="Fundus photograph", type="filepath", file_types=["image"])
                enhancement = gr.Radio(list(ENHANCEMENTS), value="none", label="Enhancement")
                run = gr.Button("Inspect", variant="primary")
                gr.Examples(_example_files(example_dir), inputs=upload)
            with gr.Column():
                crop = gr.Image(label="Field-of-view crop (512 px)", type="numpy")
                report = gr.Markdown(elem_id="quality-report")
        run.click(
            inspect_fundus, [upload, enhancement], [crop, report], api_name="inspect", concurrency_limit=2
        )
    return demo
