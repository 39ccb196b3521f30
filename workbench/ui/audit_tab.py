"""The Gradio "Audit" tab: a zip of photographs plus a labels CSV (or a folder under the data root) in,
the audit report out: figures, plots, the self-contained HTML and the per-image CSV to download.

A face: it unpacks and validates the upload and calls ``workbench.reports.audit``; no numbers here.
"""

from __future__ import annotations

import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import gradio as gr

from workbench.analysis import Workbench
from workbench.io.image_io import HEAD_BYTES, SUPPORTED_FORMATS_TEXT, is_image_name
from workbench.reports.audit import LabelsError, read_labels, run_audit, write_audit_report
from workbench.reports.audit.figures import training_overlap_note
from workbench.reports.audit.labels import labels_format
from workbench.reports.audit.report import audit_plots
from workbench.ui.handlers import LONG_WORK, NARROW_PX

__all__ = ["MAX_ZIP_MEMBERS", "audit", "audit_input_problems", "build_audit_tab"]

MAX_ZIP_MEMBERS = 5000
MAX_UNPACKED_BYTES = 4 * 1024**3
# below this many graded images an audit's intervals say little (said under its figures)
SMALL_AUDIT = 30


def _is_image_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo) -> bool:
    """An image suffix, or another name and a DICOM header (only then is the member's head read); a member
    that cannot be read (encrypted, an unknown compression, corrupt) is not offered."""
    if is_image_name(member.filename):
        return True
    try:
        with zf.open(member) as handle:
            return is_image_name(member.filename, handle.read(HEAD_BYTES))
    except (RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error, OSError):
        return False


def _unpack(archive: str, into: Path) -> Path:
    """Extract the image files of ``archive`` flat into ``into`` (no paths from the zip are trusted)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and _is_image_member(zf, m)]
            if not members:
                raise gr.Error(f"The zip holds no image files ({SUPPORTED_FORMATS_TEXT}).")
            if len(members) > MAX_ZIP_MEMBERS or sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
                raise gr.Error(f"The zip is too large: at most {MAX_ZIP_MEMBERS} images and 4 GB unpacked.")
            for member in members:
                target = into / Path(member.filename).name  # flat: a name like ../../x cannot escape
                with zf.open(member) as src:
                    target.write_bytes(src.read())
    except zipfile.BadZipFile as exc:
        raise gr.Error(f"The images upload is not a readable zip file ({exc}).") from exc
    return into


def audit_input_problems(
    archive: str | None,
    labels_csv: str | None,
    folder: str | None,
    data_dir: Path | None,
    brief: bool = True,
) -> tuple[str | None, str | None]:
    """(problem with the photographs input, problem with the labels input), None where it is usable: the
    checks that need no unpacking, run before an audit starts (``audit`` checks the rest). ``brief``: the
    labels' problem in one short line for its upload box (the validator: what the tab and API callers
    see); else in full (``audit`` called directly from Python)."""
    images = None
    if archive:
        if not zipfile.is_zipfile(archive):
            images = f"{Path(archive).name} is not a readable zip file."
    elif not (folder and data_dir is not None):
        images = "Upload a zip of the photographs (or choose a folder under the data root)."
    if not labels_csv:
        return images, (
            "Upload the labels CSV (columns image,dr_grade[,dme_grade]; or IDRiD / APTOS / EyePACS style)."
        )
    try:
        labels_format(Path(labels_csv))
    except LabelsError as exc:
        return images, exc.brief if brief else str(exc)
    except OSError as exc:
        return images, f"{Path(labels_csv).name} cannot be read as a CSV text file ({type(exc).__name__})."
    return images, None


def audit(
    workbench: Workbench,
    data_dir: Path | None,
    archive: str | None,
    labels_csv: str | None,
    folder: str | None,
    progress: gr.Progress | None = None,
) -> tuple[Any, ...]:
    """Run an audit: (summary markdown, ROC, reliability, confusion, recall, HTML path, CSV path, JSON)."""
    images_problem, labels_problem = audit_input_problems(archive, labels_csv, folder, data_dir, brief=False)
    if labels_problem or images_problem:  # one message: the labels' problem before the photographs'
        raise gr.Error(labels_problem or images_problem)
    work = Path(tempfile.mkdtemp(prefix="drwb-audit-"))
    if archive:
        (work / "images").mkdir()
        images = _unpack(archive, work / "images")
    else:  # a folder under the data root (audit_input_problems has checked that one was given)
        images = (Path(data_dir) / folder).resolve()
        if Path(data_dir).resolve() not in images.parents and images != Path(data_dir).resolve():
            raise gr.Error("The folder must lie under the data root.")
    try:
        labels = read_labels(Path(labels_csv), images, where="the zip" if archive else folder)
    except (LabelsError, FileNotFoundError) as exc:
        raise gr.Error(str(exc)) from exc
    total = len(labels.images)

    def report(done: int, _: int) -> None:
        if progress is not None:
            progress(done / total, desc=f"graded {done} of {total} images")

    figures, graded, overlays = run_audit(workbench, labels, progress=report)
    written = write_audit_report(figures, graded, overlays, work / "report", work / "report" / "audit.html")
    plots = audit_plots(figures)
    g = figures.get("grading", {})

    def _v(key: str) -> str:
        value, ci = g.get(key), (g.get("ci95") or {}).get(key)
        return "n/a" if value is None else f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    ignored = (
        f", {len(labels.without_image)} label row(s) without an image (ignored)"
        if labels.without_image
        else ""
    )
    summary = (
        f"**{figures['n']} labelled images** ({labels.format} format): {figures['n_graded']} graded, "
        f"{figures['n_ungradeable']} ungradeable, {figures['n_unreadable']} unreadable; "
        f"{len(labels.unlabelled)} image(s) without a label row{ignored}.\n\n"
        f"| DR accuracy | DR QWK | DME accuracy | referable AUC |\n|---|---|---|---|\n"
        f"| {_v('dr_accuracy')} | {_v('dr_qwk')} | {_v('dme_accuracy')} | {_v('referable_auc')} |\n\n"
        "[95% bootstrap intervals]"
    )
    if g and g.get("referable_auc") is None:
        summary += (
            "\n\nReferable AUC n/a: it needs both referable (grade 2-4) and non-referable labelled images."
        )
    if 0 < figures["n_graded"] < SMALL_AUDIT:
        summary += (
            f"\n\n**Only {figures['n_graded']} graded images:** the intervals are wide, and where every "
            "image agrees they collapse to one value ([1.000, 1.000]): the sample's size, not certainty."
        )
    if note := training_overlap_note(figures):
        summary += f"\n\n**{note}**"
    return (
        summary,
        plots.get("roc"),
        plots.get("reliability"),
        plots.get("confusion"),
        plots.get("recall"),
        str(written["html"]),
        str(written["csv"]),
        figures,
    )


def build_audit_tab(workbench: Workbench, data_dir: Path | None) -> None:
    """Lay out the tab inside an open ``gr.Blocks`` / ``gr.Tab`` context and wire its event."""
    gr.Markdown(
        "Hold the default grader against your own labelled photographs. Upload a **zip of images** and a "
        "**labels CSV**: `image,dr_grade[,dme_grade]` (image = file name with or without suffix), or "
        "IDRiD's `Image name,Retinopathy grade,Risk of macular edema`, or APTOS `id_code,diagnosis`, or "
        "EyePACS `image,level`."
    )
    with gr.Row():
        # side by side on a wide window, stacked on a narrow one (where a message on the box needs room)
        archive = gr.File(
            label="Photographs (zip)", file_types=[".zip"], type="filepath", min_width=NARROW_PX
        )
        labels = gr.File(label="Labels (CSV)", file_types=[".csv"], type="filepath", min_width=NARROW_PX)
        folder = gr.Textbox(
            label="...or a folder under the data root" if data_dir else "Folder (needs --data)",
            interactive=data_dir is not None,
        )
    run = gr.Button("Run audit", variant="primary")
    summary = gr.Markdown(elem_classes=["wide-tables"])
    with gr.Row():  # side by side on a wide window, stacked on a narrow one
        roc = gr.Plot(label="ROC", min_width=NARROW_PX)
        reliability = gr.Plot(label="Reliability", min_width=NARROW_PX)
    with gr.Row():
        confusion = gr.Plot(label="Confusion matrix", min_width=NARROW_PX)
        recall = gr.Plot(label="Recall per grade", min_width=NARROW_PX)
    with gr.Row():
        html_out = gr.File(label="Audit report (HTML, opens offline)")
        csv_out = gr.File(label="Per-image results (CSV)")
    figures = gr.JSON(label="All figures", visible=False)

    # Gradio finds progress tracking by this default value: the call in the default is its documented API.
    def _run(a: str | None, c: str | None, f: str | None, progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        return audit(workbench, data_dir, a, c, f, progress)

    def _validate(a: str | None, c: str | None, f: str | None) -> list:
        """A bad input is named on its own box and nothing runs (no error badges over the outputs)."""
        images, labels_problem = audit_input_problems(a, c, f, data_dir)
        return [
            gr.validate(images is None, images or ""),
            gr.validate(labels_problem is None, labels_problem or ""),
        ] + [gr.validate(True, "")]

    outputs = [summary, roc, reliability, confusion, recall, html_out, csv_out, figures]
    for box in (archive, labels):  # new inputs clear the last audit: nothing on screen is another run's
        box.change(
            lambda: (None,) * len(outputs), None, outputs, show_progress="hidden", api_visibility="private"
        )
    run.click(
        _run,
        [archive, labels, folder],
        outputs,
        validator=_validate,
        api_name="audit",
        **LONG_WORK,
    )
