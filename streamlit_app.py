"""Streamlit grade viewer: grades for a set of fundus images, and a closer look at any one of them.

``streamlit run streamlit_app.py``. A thin face over ``workbench``: models load once per process
(``st.cache_resource``, shared and read-only), each user's analyses live in ``st.session_state`` keyed by
the sha256 of the file's bytes, so re-uploading a file never re-analyses it. A bad file shows an error
in its row and the rest of the batch goes on. ``DRWB_DATA`` (or the sidebar) points it at a folder; an
IDRiD-layout folder, or a folder with a labels CSV (``labels.csv`` inside it, or a path in the sidebar;
the audit's formats: ours, APTOS, EyePACS), also shows the ground-truth grades and whether they agree.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import streamlit as st

import workbench  # noqa: F401  (offline environment first)
from workbench.analysis import Workbench, profile_from_env
from workbench.io.idrid import IDRiD, IDRiDLabelsError, IDRiDLayoutError
from workbench.io.image_io import IMAGE_SUFFIXES, ImageLoadError
from workbench.reports.audit import LabelsError, read_labels
from workbench.reports.batch import expand_inputs, unread_message
from workbench.reports.render import (
    heatmap_overlay,
    landmarks_overlay,
    lesion_overlay,
    lesion_table_styler,
    probability_figure,
)
from workbench.reports.report import lesion_rows, summary_row
from workbench.targets import GradeTarget
from workbench.ui.summary import headline_lines, landmarks_caption


@st.cache_resource(show_spinner="Loading the models (the first visit after a start takes about a minute)")
def get_workbench() -> Workbench:
    return Workbench(profile=profile_from_env())


def _ground_truth(folder: Path, labels: Path | None) -> tuple[list[Path], dict[str, tuple[int, int | None]]]:
    """Images of a folder with their (DR, DME) labels: from a labels CSV, or from an IDRiD root. A labels
    CSV leaves no photograph out: those without a row come after the labelled ones, without truth (and
    the sidebar says how many)."""
    labels = labels or (folder / "labels.csv" if (folder / "labels.csv").is_file() else None)
    if labels is not None:
        read = read_labels(labels, folder)  # LabelsError names the offending rows
        if read.unlabelled:
            st.sidebar.warning(
                f"{len(read.unlabelled)} photograph(s) in {folder.name} have no row in {labels.name}: shown "
                "without ground truth"
            )
        unlabelled = [folder / name for name in read.unlabelled]
        truth = {i.path.name: (i.dr_grade, i.dme_grade) for i in read.images}
        return [i.path for i in read.images] + unlabelled, truth
    try:
        records = IDRiD(folder).grading("train")
        return [r.image_path for r in records], {
            r.image_path.name: (r.dr_grade, r.dme_grade) for r in records
        }
    except IDRiDLayoutError:  # not an IDRiD root: its photographs without truth (bad IDRiD labels are
        # IDRiDLabelsError, said by the caller)
        return expand_inputs([str(folder)]), {}


def _analyze(name: str, data: bytes) -> None:
    # by content and name: the name can say which eye (workbench.landmarks.laterality), so two names of
    # one photograph ("x_left.jpg", "x_right.jpg") are two analyses, each checked against its own label
    key = f"{hashlib.sha256(data).hexdigest()}:{name}"
    cache = st.session_state.setdefault("analyses", {})
    if key not in cache:
        try:
            cache[key] = (get_workbench().analyze(data, name=name), "")
        except (ImageLoadError, OSError) as exc:  # the other files go on, as in `drwb analyze`
            cache[key] = (None, unread_message(name, exc))
    st.session_state.setdefault("order", {})[name] = key


st.set_page_config(page_title="DR Workbench viewer", layout="wide")
st.title("DR Workbench: grade viewer")
st.caption("Research and audit tool, not a medical device.")

with st.sidebar:
    uploads = st.file_uploader(
        "Fundus images", type=[suffix.lstrip(".") for suffix in IMAGE_SUFFIXES], accept_multiple_files=True
    )
    folder_text = st.text_input(
        "...or a folder (IDRiD layout shows ground truth)", os.environ.get("DRWB_DATA", "")
    )
    labels_text = st.text_input("Labels CSV for that folder (optional; labels.csv inside it is found)", "")
    limit = st.number_input("Images from the folder", 1, 500, 20)
    referable_only = st.checkbox("Referable only")
    ungradeable_only = st.checkbox("Ungradeable only")
    grade_range = st.slider("DR grade range", 0, 4, (0, 4))

files: list[tuple[str, bytes]] = [(u.name, u.getvalue()) for u in uploads or []]
truth: dict[str, tuple[int, int]] = {}
if folder_text.strip():
    folder = Path(folder_text.strip())
    if folder.is_dir():
        paths: list[Path] = []
        try:
            paths, truth = _ground_truth(folder, Path(labels_text.strip()) if labels_text.strip() else None)
        except (LabelsError, IDRiDLabelsError, FileNotFoundError) as exc:  # bad labels, or no photograph
            st.sidebar.error(str(exc))
            try:  # the photographs, without truth
                paths, truth = expand_inputs([str(folder)]), {}
            except (FileNotFoundError, ValueError) as nothing:  # none at its top level: said once
                if str(nothing) != str(exc):
                    st.sidebar.error(str(nothing))
        files += [(p.name, p.read_bytes()) for p in paths[: int(limit)]]
    else:
        st.sidebar.error(f"{folder} is not a folder")

if not files:
    st.info("Upload fundus photographs or point the sidebar at a folder.")
    st.stop()

progress = st.progress(0.0, text="analyzing")
for index, (name, data) in enumerate(files):
    progress.progress(
        index / len(files), text=f"{name}: quality, grades, lesions, landmarks ({index + 1} of {len(files)})"
    )
    _analyze(name, data)
progress.empty()

analyses = st.session_state["analyses"]
rows = []
for name, _ in files:
    analysis, error = analyses[st.session_state["order"][name]]
    row = summary_row(analysis, name, error)
    if name in truth:
        row["true_dr"], row["true_dme"] = truth[name]
        if analysis is not None and analysis.graded:
            row["dr_agrees"] = analysis.dr_grade == truth[name][0]
            row["referable_agrees"] = analysis.referable == (truth[name][0] >= 2)
    rows.append(row)
table = pd.DataFrame(rows)
shown = table
if referable_only:
    shown = shown[shown["referable"] == True]  # noqa: E712 (pandas element-wise comparison)
if ungradeable_only:
    shown = shown[shown["quality"] != "gradeable"]
graded = shown["dr_grade"].notna()
shown = shown[~graded | shown["dr_grade"].between(*grade_range)]
# readable titles on screen; the CSV download keeps the field names (as summary.csv has them)
TITLES = {
    "quality_reasons": "why not gradeable",
    "dr_grade": "DR grade",
    "dr_probability": "P(grade)",
    "dme_grade": "DME risk",
    "referable": "referable DR",
    "MA": "microaneurysms",
    "HE": "haemorrhages",
    "EX": "hard exudates",
    "SE": "soft exudates",
    "true_dr": "true DR grade",
    "true_dme": "true DME risk",
    "dr_agrees": "DR grade agrees",
    "referable_agrees": "referral agrees",
}
st.dataframe(
    shown,
    hide_index=True,
    use_container_width=True,
    column_config={key: st.column_config.Column(title) for key, title in TITLES.items()},
)
st.download_button("Download CSV", shown.to_csv(index=False), "drwb_grades.csv", "text/csv")
for _, row in shown[shown["error"].notna()].iterrows():
    message = str(row["error"])  # a load error already names the file
    st.error(message if message.startswith(str(row["file"])) else f"{row['file']}: {message}")

choices = [name for name in shown["file"] if analyses[st.session_state["order"][name]][0] is not None]
if choices:
    picked = st.selectbox("Look at one image", choices)
    analysis = analyses[st.session_state["order"][picked]][0]
    if not analysis.graded:
        st.warning("Not gradeable: " + "; ".join(analysis.quality.reasons))
        st.image(analysis.crop, caption="field of view")
    else:
        # the Gradio Analyze summary's headline: grade, referral, their disagreement, an uncertain grade
        st.markdown("\n\n".join(headline_lines(analysis)))
        if analysis.laterality is not None:  # before the pictures: a mismatch is not to be scrolled past
            show = st.warning if analysis.laterality.agrees is False else st.caption
            show(f"Eye: {analysis.laterality.sentence}")
        # the same two views, colours and legends as the Gradio Analyze tab and the HTML report
        left, right = st.columns(2)
        left.image(lesion_overlay(analysis), caption="lesions (unreliable types grey, marked in the legend)")
        right.image(
            landmarks_overlay(analysis, lesion_overlay(analysis, codes=["OD"], legend=False)),
            caption=landmarks_caption(analysis),
        )
        st.plotly_chart(probability_figure(analysis), use_container_width=True)
        if analysis.fovea_doubt:
            st.warning(
                f"Fovea doubtful ({analysis.fovea_doubt}): no ETDRS grid, lesions by region "
                "or DME rule check."
            )
        st.caption(
            "Lesions. Types whose validated AUPR is below the reliability floor are not findings "
            "(see the reliability column)."
        )
        st.dataframe(
            lesion_table_styler(lesion_rows(analysis)),  # unreliable types greyed
            hide_index=True,
            use_container_width=True,
        )
        methods = ["attention", "gradcam"]
        columns = st.columns(len(methods))
        for column, method in zip(columns, methods, strict=True):
            with st.spinner(f"Explaining the grade with {method}"):  # each map shows as soon as it is ready
                heat = get_workbench().explain(analysis.crop, [method], GradeTarget(analysis.dr_grade))[
                    method
                ]
            column.image(
                heatmap_overlay(analysis.crop, heat), caption=f"{heat.named(method)}: {heat.seconds:.2f} s"
            )
