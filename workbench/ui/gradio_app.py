"""Gradio analyst workbench: layout and event wiring only (STYLE.md section 4).

Tabs: Analyze, Compare explanations, Dataset browser (when an IDRiD folder is configured), Batch, Models,
Inspect (quality and field of view only). Every event has an ``api_name`` so ``gradio_client`` can call it:
``/analyze``, ``/compare``, ``/slide``, ``/browse``, ``/batch``, ``/inspect``. Menus come from the registries
(``EXPLAINERS``, shipped model cards), never from hard-coded lists.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
from PIL import Image

from models.enhance import ENHANCEMENTS
from models.registry import list_shipped
from workbench.analysis import RELIABILITY_FLOOR, Workbench
from workbench.explain.explainers import EXPLAINERS
from workbench.explain.notes import METHOD_LABELS, SCORE_COLUMNS
from workbench.io.synthetic import make_fundus
from workbench.model_table import grader_label
from workbench.reports.render import LESION_COLOUR_MAP
from workbench.reports.report import LESION_COLUMNS
from workbench.ui.audit_tab import build_audit_tab
from workbench.ui.handlers import (
    BATCH_COLUMNS,
    LONG_WORK,
    MODEL_WORK,
    NARROW_PX,
    TARGET_CHOICES,
    Handlers,
)
from workbench.ui.inspect import inspect_fundus
from workbench.ui.scores_table import SCORE_TABLE_HEADERS
from workbench.ui.summary import FORCE_LABEL

__all__ = ["APP_CSS", "MAX_UPLOAD", "build_demo", "inspect_fundus", "write_examples"]

log = logging.getLogger(__name__)
MAX_UPLOAD = "60mb"
DEFAULT_METHODS = ["attention", "gradcam", "integrated_gradients"]
# Pass to ``launch(css=...)``: wide tables scroll sideways inside their panel on a narrow window instead
# of squeezing every column to one letter a line (the Models tab at 420 px).
APP_CSS = (
    ".wide-tables table { display: block; overflow-x: auto; max-width: 100%;"
    " padding-left: 0; padding-right: 0; }"  # no gap left of the sticky first column
    # titles stay on one line; cells wrap at spaces only (a figure and its interval are joined by no-break
    # spaces, workbench.model_table), and the last column, where the sentences live, keeps a readable
    # width: at 1400 px the grader table was 3456 px wide with every cell on one line
    " .wide-tables th { white-space: nowrap; }"
    " .wide-tables td { overflow-wrap: normal; word-break: normal; }"  # Gradio breaks inside words
    " .wide-tables td:last-child { min-width: 16em; }"
    # the model's name stays in view while the figures scroll sideways under it
    " .wide-tables th:first-child, .wide-tables td:first-child { position: sticky; left: 0; z-index: 1;"
    " background: var(--background-fill-primary); }"
    " #batch-table th { white-space: nowrap; }"
    # gallery captions wrap over the thumbnail's foot instead of ending in "..."
    " #methods-gallery .caption-label { white-space: normal; overflow-wrap: anywhere; max-width: 100%;"
    " left: var(--block-label-margin); }"
    # on a narrow window three ~100-px thumbnails leave the captions covering the maps: one a row
    " @media (max-width: 600px) { #methods-gallery .grid-container"
    " { grid-template-columns: 1fr !important; } }"
    # a bad upload's message stays inside its box and wraps there (Gradio 6 sizes it wider than a narrow
    # box and centres it, so both ends were cut off), at the box's foot: at its head it covered the box's
    # clear button, so the file could not be removed until the message was closed
    " .validation-error { left: 0 !important; right: 0 !important; width: auto !important;"
    " top: auto !important; bottom: 0 !important;"
    " max-width: 100%; box-sizing: border-box; overflow-wrap: anywhere; padding-right: 32px !important; }"
)


def write_examples(folder: str | Path) -> list[str]:
    """Synthetic example fundi (no real patient image ships with the app)."""
    paths = []
    for seed, grade, dme in ((1, 0, 0), (2, 2, 1), (3, 3, 2), (4, 4, 2)):
        path = Path(folder) / f"synthetic_grade{grade}_dme{dme}.png"
        if not path.exists():
            Image.fromarray(make_fundus(seed, size=(712, 1072), dr_grade=grade, dme_grade=dme).image).save(
                path
            )
        paths.append(str(path))
    return paths


# "image" is what browsers call image/*; DICOM files (application/dicom) are named by suffix. A DICOM
# export without a suffix can be renamed *.dcm, or given to `drwb analyze`, which reads content.
UPLOAD_TYPES = ["image", ".dcm", ".dicom"]


def _upload(label: str = "Fundus photograph") -> gr.File:
    # gr.File, not gr.Image: gr.Image decodes the upload itself and turns a corrupt file into a generic
    # error; our loader names the problem (truncated, not an image, too large...).
    return gr.File(label=label, type="filepath", file_types=UPLOAD_TYPES)


def _upload_with_preview(handlers: Handlers) -> gr.File:
    """The upload box and, under it, the photograph as uploaded; a bad file is named at upload."""
    upload = _upload()
    preview = gr.Image(label="Uploaded photograph", type="numpy", interactive=False, height=220)
    upload.change(handlers.preview, upload, preview, show_progress="hidden", api_visibility="private")
    return upload


def build_demo(workbench: Workbench, example_dir: str, data_dir: Path | None = None) -> gr.Blocks:
    """The whole workbench UI; ``workbench`` is shared by every session (read-only)."""
    handlers = Handlers(workbench, data_dir)
    examples = write_examples(example_dir)
    # (label, value): the default and a weak grader are marked as such where they can be chosen
    graders = [
        (
            grader_label(
                p, default=p.weights.removesuffix(".safetensors") == workbench.model_names["grader"]
            ),
            p.weights.removesuffix(".safetensors"),
        )
        for p in list_shipped(workbench.weights_dir)
        if p.arch == "grader"
    ]
    with gr.Blocks(title="DR Workbench") as demo:
        gr.Markdown(
            "# DR Workbench\nDiabetic retinopathy grading, lesions and explanations. Research and audit "
            "tool, not a medical device."
        )
        # on a narrow window the tabs wrap onto more rows rather than hiding behind a menu
        with gr.Tabs(overflow_behavior="wrap"):
            with gr.Tab("Analyze"):
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = _upload_with_preview(handlers)
                        force = gr.Checkbox(label=FORCE_LABEL, value=False)
                        run = gr.Button("Analyze", variant="primary", elem_id="analyze-button")
                        gr.Examples(examples, inputs=upload)
                    with gr.Column(scale=2):
                        summary = gr.Markdown(elem_id="analysis-summary")
                        probabilities = gr.Plot(label="Probabilities", elem_id="probabilities-panel")
                with gr.Row():
                    lesions = gr.AnnotatedImage(
                        label="Lesions",
                        min_width=NARROW_PX,
                        elem_id="lesions-panel",
                        color_map=LESION_COLOUR_MAP,  # keyed by every label lesion_annotations gives
                    )
                    landmarks = gr.Image(
                        label="Optic disc, fovea and ETDRS grid",
                        type="numpy",
                        min_width=NARROW_PX,
                        elem_id="landmarks-panel",
                    )
                lesion_table = gr.Dataframe(
                    headers=LESION_COLUMNS,
                    elem_id="lesion-table",
                    wrap=True,  # the reliability reason is read whole, not cut at the column edge
                    # room for every heading's longest word ("lesion", "count" broke mid-word at 1500 px);
                    # the reason takes the rest
                    # in pixels: percentages of a 380-px phone column squeezed "lesion" to 33 px and broke
                    # every title mid-word; in pixels the table keeps its shape and scrolls sideways
                    column_widths=["170px", "70px", "90px", "100px", "100px", "90px", "300px"],
                    # the floor said in the label: "0 ... reliable" read as "none, confirmed" (a count of 0
                    # from a detector that passed validation is still not proof that there are none)
                    label=f"Lesions ('reliable': the type's validated AUPR is at least "
                    f"{RELIABILITY_FLOOR:.2f}; below it a count is not a finding, and no detector's 0 proves "
                    "there are none)",
                )
                report_file = gr.File(label="Report (HTML, one file with its pictures)")
                report = gr.JSON(label="All numbers")
                analysis_outputs = [summary, probabilities, lesions, landmarks, lesion_table, report]
                # a new (or removed, or bad) upload clears the last photograph's results: nothing on screen
                # belongs to another photograph; a bad one is named in the summary until the next upload
                upload.change(
                    handlers.cleared,
                    upload,
                    analysis_outputs,
                    show_progress="hidden",
                    api_visibility="private",
                ).then(lambda: None, None, report_file, show_progress="hidden", api_visibility="private")
                run.click(
                    handlers.analyze,
                    [upload, force],
                    [summary, probabilities, lesions, landmarks, lesion_table, report],
                    validator=handlers.validate_upload,
                    api_name="analyze",
                    **MODEL_WORK,
                ).success(handlers.analysis_report, [upload, force], report_file, api_name="analysis_report")
            with gr.Tab("Compare explanations"):
                overlays = gr.State()
                with gr.Row():
                    with gr.Column(scale=1):
                        compare_upload = _upload_with_preview(handlers)
                        target = gr.Dropdown(TARGET_CHOICES, value="predicted", label="Explain")
                        methods = gr.CheckboxGroup(  # words on screen, the registry's names to the API
                            [(METHOD_LABELS.get(name, name), name) for name in EXPLAINERS],
                            value=DEFAULT_METHODS,
                            label="Methods (1-6)",
                        )
                        grader = gr.Dropdown(
                            graders, value=workbench.model_names["grader"], label="Grader backbone"
                        )
                        compare = gr.Button("Compare", variant="primary")
                        gr.Examples(examples, inputs=compare_upload)
                    with gr.Column(scale=2):
                        target_label = gr.Textbox(label="Target", interactive=False)
                        gallery = gr.Gallery(
                            label="Methods side by side", columns=3, height="auto", elem_id="methods-gallery"
                        )
                with gr.Row():
                    slider = gr.ImageSlider(
                        label="Slide between two views", type="numpy", min_width=NARROW_PX
                    )
                    with gr.Column():
                        # a comparison fills the menus with the maps it made (handlers.slide_menus); any
                        # name passes the menus' own check, so /slide can name a map through the API too
                        left, right = (
                            gr.Dropdown(["image", "lesions"], value=v, label=t, allow_custom_value=True)
                            for v, t in (("image", "Left"), ("lesions", "Right"))
                        )
                        slide = gr.Button("Show pair")
                curves = gr.Plot(
                    label="Deletion (dashed, lower is better) and insertion (solid, higher is better) curves",
                    elem_id="curves-panel",
                )
                scores = gr.Dataframe(headers=list(SCORE_TABLE_HEADERS), label="Explanation scores")
                gr.Markdown(
                    "\n".join(f"- **{title}**: {meaning}." for title, meaning in SCORE_COLUMNS.items())
                    + '\n- Empty localisation scores: "no evidence" (the map has no positive value) or '
                    '"no lesions" (nothing segmented to score against).'
                    "\n- **seconds** / **scoring seconds**: the map's own time, and its scores' (deletion "
                    "and insertion re-run the grader ~30 times: most of a comparison's time)."
                )
                compare.click(
                    handlers.compare,
                    [compare_upload, target, methods, grader],
                    [gallery, slider, curves, scores, overlays, target_label, left, right],
                    validator=handlers.validate_compare,
                    api_name="compare",
                    **MODEL_WORK,
                ).then(
                    handlers.slide_menus,
                    [overlays, left, right],
                    [left, right],
                    show_progress="hidden",
                    api_visibility="private",
                )
                slide.click(handlers.slide, [overlays, left, right], slider, api_name="slide")
            if data_dir is not None:
                with gr.Tab("Dataset browser"):
                    names = handlers.dataset_names()
                    choice = gr.Dropdown(
                        names, value=names[0] if names else None, label="IDRiD segmentation image"
                    )
                    browse = gr.Button("Show")
                    with gr.Row():
                        truth = gr.Image(label="Ground-truth lesions", type="numpy", min_width=NARROW_PX)
                        predicted = gr.Image(label="Predicted lesions", type="numpy", min_width=NARROW_PX)
                    browse_text = gr.Markdown()
                    browse.click(
                        handlers.browse,
                        choice,
                        [truth, predicted, browse_text],
                        api_name="browse",
                        **MODEL_WORK,
                    )
                    gr.Markdown(
                        "### Graded photographs: predicted grades and landmarks beside IDRiD's\n"
                        "Each runs the whole analysis, as the Analyze tab does (the disc is placed with the "
                        "lesion network's disc mask): seconds in the quality profile, under one in the fast."
                    )
                    graded_names = handlers.grading_names()
                    graded_choice = gr.Dropdown(
                        graded_names,
                        value=graded_names[0] if graded_names else None,
                        label=f"IDRiD grading image ({len(graded_names)})",
                    )
                    browse_graded = gr.Button("Show graded image")
                    with gr.Row():
                        graded_marks = gr.Image(
                            label="Predicted and annotated landmarks", type="numpy", min_width=NARROW_PX
                        )
                        graded_text = gr.Markdown()
                    browse_graded.click(
                        handlers.browse_graded,
                        graded_choice,
                        [graded_marks, graded_text],
                        api_name="browse_graded",
                        **MODEL_WORK,
                    )
            with gr.Tab("Batch"):
                files = gr.File(
                    label="Fundus photographs",
                    file_count="multiple",
                    type="filepath",
                    file_types=UPLOAD_TYPES,
                )
                run_batch = gr.Button("Analyze all", variant="primary")
                tally = gr.Markdown(elem_id="batch-tally")  # counts, mismatched eyes (after each run)
                table = gr.Dataframe(
                    headers=BATCH_COLUMNS,
                    label="Grades (a file that could not be read gets an error row; the others go on)",
                    wrap=True,
                    # the reasons and errors are sentences: they get the room, the short columns keep
                    # their titles readable (in BATCH_COLUMNS order)
                    column_widths=[  # in pixels, as the lesion table's: it scrolls sideways
                        *["200px", "70px", "90px", "80px", "90px", "80px", "160px", "260px", "260px"],
                        *["140px", "80px", "100px", "260px"],  # eye, P(grade), P(referable), uncertain
                    ],
                    elem_id="batch-table",
                )
                csv_out = gr.File(label="summary.csv")
                zip_out = gr.File(label="HTML reports (zip)")
                run_batch.click(
                    handlers.batch, files, [table, csv_out, zip_out], api_name="batch", **LONG_WORK
                ).success(handlers.batch_tally, csv_out, tally, api_visibility="private")
            with gr.Tab("Audit"):
                build_audit_tab(workbench, data_dir)
            with gr.Tab("Models"):
                gr.Markdown(handlers.models_markdown(workbench.weights_dir), elem_classes=["wide-tables"])
            with gr.Tab("Inspect"):
                with gr.Row():
                    with gr.Column():
                        inspect_upload = _upload_with_preview(handlers)
                        enhancement = gr.Radio(list(ENHANCEMENTS), value="none", label="Enhancement")
                        run_inspect = gr.Button("Inspect")
                    with gr.Column():
                        crop = gr.Image(label="Field-of-view crop (512 px)", type="numpy")
                        quality = gr.Markdown(elem_id="quality-report")
                decode_side = workbench.segmenter.decode_side if workbench.segment else 512
                run_inspect.click(
                    lambda path, enhancement: inspect_fundus(path, enhancement, decode_side),
                    [inspect_upload, enhancement],
                    [crop, quality],
                    validator=handlers.validate_upload,
                    api_name="inspect",
                    concurrency_limit=2,
                )
    return demo
