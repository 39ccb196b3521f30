"""Which eye: read from the landmarks (disc nasal of the fovea), checked against the DICOM tag or the file
name, and a disagreement said in every face rather than resolved silently."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.fov import FieldOfView
from workbench.io.image_io import load_image
from workbench.io.synthetic import dicom_bytes, make_fundus
from workbench.landmarks.laterality import (
    NO_LABEL,
    Laterality,
    eye_from_landmarks,
    laterality_from_name,
    read_laterality,
)
from workbench.landmarks.placement import NASAL_SIDE

FIELD = FieldOfView(cx=1000.0, cy=700.0, radius=650.0, area_fraction=0.7, fill_ratio=0.95, corners_dark=True)


def test_a_trusted_fovea_decides_by_the_disc_side_of_it() -> None:
    assert eye_from_landmarks((1350, 700), (900, 720), FIELD)[0] == "right"
    assert eye_from_landmarks((650, 700), (1100, 720), FIELD)[0] == "left"
    # a trusted fovea decides even when the disc sits near the centre (a disc-centred photograph)
    assert eye_from_landmarks((1050, 700), (700, 720), FIELD) == ("right", "the disc lies right of the fovea")


def test_a_doubtful_fovea_leaves_the_disc_offset_or_nothing() -> None:
    assert eye_from_landmarks((1350, 700), (1600, 100), FIELD, fovea_doubt="far off") == (
        "right",
        "the disc lies right of the field's centre",
    )
    eye, why = eye_from_landmarks((1050, 700), (1600, 100), FIELD, fovea_doubt="far off")
    assert eye is None and "near the field's centre" in why
    # a fovea on the disc's nasal side: the landmarks point to different eyes, so neither decides
    eye, why = eye_from_landmarks((1350, 700), (1500, 720), FIELD, fovea_doubt=NASAL_SIDE)
    assert eye is None and why == "the disc and the fovea point to different eyes"


def test_a_doubtful_disc_decides_nothing_even_with_a_trusted_fovea() -> None:
    assert eye_from_landmarks((1350, 700), (900, 720), FIELD, od_doubt="two discs") == (
        None,
        "the disc is doubtful",
    )


@pytest.mark.parametrize(
    ("name", "eye"),
    [
        ("10_left.jpeg", "left"),
        ("patient 3 Right.png", "right"),
        ("scan-RIGHT-2.tif", "right"),
        ("bright.png", None),  # a word inside another word is not a label
        ("leftover_right.png", "right"),
        ("left_and_right.png", None),  # both: the name says nothing
        ("left_right.png", None),  # both, sharing one separator
        ("right-left.jpg", None),
        ("Left.dcm", "left"),
        ("left/IDRiD_01.jpg", None),  # folders are not the file's name
        ("IDRiD_01.jpg", None),
    ],
)
def test_the_file_name_names_an_eye_only_as_a_word_of_its_own(name: str, eye: str | None) -> None:
    assert laterality_from_name(name) == eye


def test_a_disagreement_is_said_naming_both_sides_and_the_causes() -> None:
    lat = read_laterality((1350, 700), (900, 720), FIELD, None, None, "x.dcm", "ImageLaterality L")
    assert (lat.eye, lat.file_says, lat.agrees) == ("right", "left", False)
    assert lat.sentence == (
        "MISMATCH: the landmarks show a right eye (the disc lies right of the fovea) but the file says left "
        "(DICOM ImageLaterality L): the file may be mislabelled, the image mirrored or inverted, or the "
        "disc misplaced"
    )
    assert lat.cell == "MISMATCH: right, the file says left"
    agreeing = read_laterality((1350, 700), (900, 720), FIELD, None, None, "7_right.jpg")
    assert agreeing.agrees is True
    assert agreeing.sentence == "right (the disc lies right of the fovea; the file says right too: file name)"
    silent = Laterality("left", "the disc lies left of the fovea")
    assert silent.agrees is None
    assert silent.sentence == f"left (the disc lies left of the fovea; {NO_LABEL})"
    unknown = read_laterality((1350, 700), (900, 720), FIELD, None, "two discs", "7_left.jpg")
    assert unknown.agrees is None
    assert unknown.sentence == "undetermined (the disc is doubtful; the file says left (file name))"
    assert Laterality.from_dict(lat.as_dict()) == lat
    # a tag value the reader never hands over (anything but R / L) is no label, not a crash
    assert (
        read_laterality((1350, 700), (900, 720), FIELD, None, None, "x.dcm", "Laterality B").file_says is None
    )


def test_the_dicom_tag_is_read_and_only_r_or_l_counts() -> None:
    pixels = make_fundus(3, size=(120, 180)).image
    assert load_image(dicom_bytes(pixels, laterality="L"), name="a.dcm").laterality == "ImageLaterality L"
    for unknown in ("B", "U"):
        assert load_image(dicom_bytes(pixels, laterality=unknown), name="a.dcm").laterality is None
    # the series' Laterality when the image's own tag says nothing; padded lower case is read
    series = pydicom.dcmread(io.BytesIO(dicom_bytes(pixels, laterality="U")))
    series.Laterality = "l "
    buffer = io.BytesIO()
    series.save_as(buffer)
    assert load_image(buffer.getvalue(), name="b.dcm").laterality == "Laterality L"
    assert load_image(dicom_bytes(pixels, laterality="R"), name="a.dcm").source_format == "DICOM"


def test_every_face_says_a_mismatch(tiny_workbench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same photograph labelled with each eye: the one label that disagrees with the landmarks is
    said by the summary, report.json, the HTML report and the batch CSV. The tiny test networks place
    landmarks at random, so the analysis is given the synthetic photograph's own disc and fovea."""
    from dataclasses import replace

    from workbench.analysis import pipeline
    from workbench.reports.batch import analyze_files
    from workbench.reports.html_page import report_html
    from workbench.reports.report import analysis_to_dict
    from workbench.ui.summary import summary_markdown

    sample = make_fundus(4, size=(356, 536), dr_grade=2)
    place = pipeline.place_landmarks

    def at_truth(*args, **kwargs):
        placed = place(*args, **kwargs)
        fovea = replace(placed.fovea, xy=sample.fovea_xy, doubt=None)
        return replace(placed, od_xy=sample.od_xy, od_doubt=None, fovea=fovea)

    monkeypatch.setattr(pipeline, "place_landmarks", at_truth)
    eye = "right" if sample.od_xy[0] > sample.fovea_xy[0] else "left"
    right, wrong = ("R", "L") if eye == "right" else ("L", "R")
    pixels = sample.image
    analyses = {
        tag: tiny_workbench.analyze(load_image(dicom_bytes(pixels, laterality=tag), name=f"{tag}.dcm"))
        for tag in ("R", "L")
    }
    assert {a.laterality.eye for a in analyses.values()} == {eye}  # the landmarks decide, not the file
    assert (analyses[right].laterality.agrees, analyses[wrong].laterality.agrees) == (True, False)
    # a mismatch comes right under the grades, in bold; an agreeing label on the landmarks' line
    summary = summary_markdown(analyses[wrong]).split("\n\n")
    below = next(i for i, line in enumerate(summary) if line.startswith("**Quality:**")) + 1
    assert summary[below].startswith(f"**Eye: MISMATCH:** the landmarks show a {eye} eye (")
    assert f"**Eye:** {eye} (the disc lies" in summary_markdown(analyses[right])
    assert "MISMATCH" not in summary_markdown(analyses[right])
    data = analysis_to_dict(analyses[wrong])
    assert data["laterality"]["agrees_with_file"] is False
    assert data["laterality"]["file_source"] == f"DICOM ImageLaterality {wrong}"
    page = report_html(data, {})
    assert "<p id='laterality' class='doubt'>Eye: MISMATCH: the landmarks show" in page

    photos = tmp_path / "in"
    photos.mkdir()
    for tag in ("R", "L"):
        (photos / f"{tag}.dcm").write_bytes(dicom_bytes(pixels, laterality=tag))
    analyze_files(tiny_workbench, [str(photos)], tmp_path / "out", score=False)
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        rows = {Path(r["file"]).stem: r for r in csv.DictReader(handle)}
    assert rows[wrong]["eye_agrees_with_file"] == "False" and rows[right]["eye_agrees_with_file"] == "True"
    assert (rows["R"]["eye_file_says"], rows["L"]["eye_file_says"]) == ("right", "left")
    assert rows[wrong]["eye"] == rows[right]["eye"] == eye
    # and the run's one-line tally (drwb analyze's last line, above the Batch tab's table) counts it
    from workbench.reports.batch import batch_tally
    from workbench.ui.handlers import Handlers

    assert batch_tally(rows.values()).endswith(" · 1 eye MISMATCH with the file's own label")
    shown = Handlers.batch_tally(str(tmp_path / "out" / "summary.csv"))
    assert shown.startswith("**Batch:** 2 photographs: 2 analysed")


def test_the_batch_tally_counts_each_outcome_and_names_mismatches_only_when_there_are_some() -> None:
    from workbench.reports.batch import batch_tally

    def row(status="ok", gradeable="True", referable="False", dme="0", agrees=""):
        return {
            "status": status,
            "gradeable": gradeable,
            "referable": referable,
            "dme_grade": dme,
            "eye_agrees_with_file": agrees,
        }

    rows = [
        row(referable=True, dme=2, agrees=False),  # as analyze_files returns them
        row(referable="True", dme="1", agrees="True"),  # as summary.csv reads back
        row(gradeable="False", dme=""),
        row(status="error", gradeable="", referable="", dme=""),
        row(agrees="False"),
    ]
    assert batch_tally(rows) == (
        "5 photographs: 4 analysed, 1 could not be read · 1 not gradeable · 2 referable DR · "
        "2 DME risk 1-2 · 2 eye MISMATCHES with the file's own label"
    )
    one = "1 photograph: 1 analysed · 0 not gradeable · 1 referable DR · 1 DME risk 1-2"
    assert batch_tally(rows[1:2]) == one


def test_the_agreement_interval_is_informative_when_every_eye_is_right() -> None:
    """Wilson, checked against its textbook values; a bootstrap of 78 of 78 would say [1, 1]."""
    from training.evaluate import _laterality_agreement
    from workbench.intervals import wilson_interval

    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    eye, truth = np.array([1] * 40 + [-1] * 38 + [0] * 5), np.array([1] * 40 + [-1] * 38 + [1] * 5)
    agreement = _laterality_agreement(eye, truth)
    assert (agreement["determined"], agreement["agree"], agreement["accuracy_of_determined"]) == (78, 78, 1.0)
    assert agreement["ci95_accuracy_of_determined"] == pytest.approx([0.9531, 1.0], abs=1e-4)
    eye[0] = -1  # one wrong eye lowers both
    assert _laterality_agreement(eye, truth)["agree"] == 77
