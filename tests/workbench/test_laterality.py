"""Which eye: read from the landmarks (disc nasal of the fovea), checked against the DICOM tag or the file
name, and a disagreement said in every face rather than resolved silently."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from models.fov import FieldOfView
from workbench.io.image_io import load_image
from workbench.io.synthetic import dicom_bytes, make_fundus
from workbench.landmarks.laterality import (
    Laterality,
    eye_from_landmarks,
    laterality_from_name,
    read_laterality,
)

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
    eye, why = eye_from_landmarks((1350, 700), (1600, 100), FIELD, "far off", od_doubt="two discs")
    assert eye is None and "both doubtful" in why


@pytest.mark.parametrize(
    ("name", "eye"),
    [
        ("10_left.jpeg", "left"),
        ("patient 3 Right.png", "right"),
        ("scan-RIGHT-2.tif", "right"),
        ("bright.png", None),  # a word inside another word is not a label
        ("leftover_right.png", "right"),
        ("left_and_right.png", None),  # both: the name says nothing
        ("left/IDRiD_01.jpg", None),  # folders are not the file's name
        ("IDRiD_01.jpg", None),
    ],
)
def test_the_file_name_names_an_eye_only_as_a_word_of_its_own(name: str, eye: str | None) -> None:
    assert laterality_from_name(name) == eye


def test_a_disagreement_is_a_warning_naming_both_sides() -> None:
    lat = read_laterality((1350, 700), (900, 720), FIELD, None, None, "x.dcm", "ImageLaterality L")
    assert (lat.eye, lat.file_says, lat.agrees) == ("right", "left", False)
    assert lat.warning == (
        "the file says left eye (DICOM ImageLaterality L) but the disc lies right of the fovea, as in a "
        "right eye: the file may be mislabelled or the image mirrored"
    )
    agreeing = read_laterality((1350, 700), (900, 720), FIELD, None, None, "7_right.jpg")
    assert agreeing.agrees is True and agreeing.warning is None
    assert agreeing.sentence == (
        "right eye (the disc lies right of the fovea; the file says so too: file name)"
    )
    silent = Laterality("left", "the disc lies left of the fovea")
    assert silent.agrees is None and silent.sentence == "left eye (the disc lies left of the fovea)"


def test_the_dicom_tag_is_read_and_only_r_or_l_counts() -> None:
    pixels = make_fundus(3, size=(120, 180)).image
    assert load_image(dicom_bytes(pixels, laterality="L"), name="a.dcm").laterality == "ImageLaterality L"
    for unknown in ("B", "U"):
        assert load_image(dicom_bytes(pixels, laterality=unknown), name="a.dcm").laterality is None
    assert load_image(dicom_bytes(pixels, laterality="R"), name="a.dcm").source_format == "DICOM"


def test_every_face_says_a_mismatch(tiny_workbench, tmp_path: Path) -> None:
    """The same photograph labelled with each eye: exactly one label disagrees with the landmarks, and
    the summary, report.json, the HTML report and the batch CSV all say which."""
    from workbench.reports.batch import analyze_files
    from workbench.reports.html_page import report_html
    from workbench.reports.report import analysis_to_dict
    from workbench.ui.summary import summary_markdown

    pixels = make_fundus(4, size=(356, 536), dr_grade=2).image
    analyses = {
        tag: tiny_workbench.analyze(load_image(dicom_bytes(pixels, laterality=tag), name=f"{tag}.dcm"))
        for tag in ("R", "L")
    }
    eyes = {a.laterality.eye for a in analyses.values()}
    assert len(eyes) == 1 and eyes != {None}  # the landmarks decide, whatever the file says
    wrong = next(tag for tag, a in analyses.items() if a.laterality.agrees is False)
    right = "L" if wrong == "R" else "R"
    assert analyses[right].laterality.agrees is True
    assert f"**Laterality mismatch:** {eyes.pop()} eye by the landmarks; the file says" in summary_markdown(
        analyses[wrong]
    )
    assert "**Eye:**" in summary_markdown(analyses[right])
    data = analysis_to_dict(analyses[wrong])
    assert data["laterality"]["agrees_with_file"] is False
    assert data["laterality"]["file_source"] == f"DICOM ImageLaterality {wrong}"
    page = report_html(data, {})
    assert "<p id='laterality' class='doubt'>" in page and "MISMATCH" in page

    photos = tmp_path / "in"
    photos.mkdir()
    for tag in ("R", "L"):
        (photos / f"{tag}.dcm").write_bytes(dicom_bytes(pixels, laterality=tag))
    analyze_files(tiny_workbench, [str(photos)], tmp_path / "out", score=False)
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        rows = {Path(r["file"]).stem: r for r in csv.DictReader(handle)}
    assert rows[wrong]["eye_agrees_with_file"] == "False" and rows[right]["eye_agrees_with_file"] == "True"
    assert rows[wrong]["eye"] == rows[right]["eye"] == analyses[wrong].laterality.eye
