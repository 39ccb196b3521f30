"""The Gradio workbench launched on 127.0.0.1 (tiny models) and driven through gradio_client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from workbench.io.synthetic import make_fundus, write_idrid_folder
from workbench.ui.gradio_app import build_demo


@pytest.fixture(scope="module")
def served_idrid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic IDRiD folder the served app browses."""
    return write_idrid_folder(tmp_path_factory.mktemp("idrid-app"), n_segmentation=2, n_grading=3)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_workbench, served_idrid
) -> Iterator[tuple[Client, str]]:
    data = served_idrid
    demo = build_demo(tiny_workbench, str(tmp_path_factory.mktemp("examples")), data)
    demo.queue(max_size=8).launch(
        server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, show_error=True
    )
    try:
        yield Client(demo.local_url, verbose=False), demo.local_url
    finally:
        demo.close()


@pytest.fixture()
def fundus_file(tmp_path: Path) -> str:
    path = tmp_path / "fundus.png"
    Image.fromarray(make_fundus(4, size=(356, 536), dr_grade=3, dme_grade=2).image).save(path)
    return str(path)


def test_analyze_endpoint_structure(served, fundus_file: str) -> None:
    client, _ = served
    summary, plot, lesions, landmarks, table, report = client.predict(
        handle_file(fundus_file), False, api_name="/analyze"
    )
    assert "DR grade" in summary
    # the HTML report of that analysis, for an API caller too (the same upload finds it)
    page = client.predict(handle_file(fundus_file), False, api_name="/analysis_report")
    assert page and Path(page).name == "report.html" and "DR grade" in Path(page).read_text()
    assert summary.count("DME risk") == 1  # "DME risk 2 (macular, ...)", not "DME risk 2 (DME risk 2, ...)"
    assert report["graded"]
    assert set(report) >= {"dr_probabilities", "dme_grade", "lesions", "fovea", "optic_disc"}
    assert len(report["dr_probabilities"]) == 5
    assert Path(landmarks).is_file()
    # the disc is anatomy (with the landmarks), not a lesion row; quantities in comparable units
    # the legend's names, with the codes the CSVs use
    assert [row[0] for row in table["data"]] == [
        "Microaneurysms (MA)",
        "Haemorrhages (HE)",
        "Hard exudates (EX)",
        "Soft exudates (SE)",
    ]
    assert table["headers"][3:5] == ["area (% of field)", "area (disc areas)"]
    ex = report["lesions"]["EX"]
    assert {"area_percent_of_field", "area_disc_areas", "validated_aupr", "reliable", "reliability"} <= set(
        ex
    )
    assert report["lesions"]["OD"]["count"] <= 1  # at most one optic disc
    # the fovea carries its doubt; a doubtful fovea means no grid and a stated reason instead
    assert "doubt" in report["fovea"]
    if report["fovea"]["doubt"]:
        assert "etdrs_grid" not in report and report["fovea_dependent"].startswith("not available")
    else:
        assert "etdrs_grid" in report


def test_lesion_layers_are_drawn_in_the_product_colours(served, fundus_file: str) -> None:
    """Each annotated layer comes back coloured with that lesion's one colour (models.constants), or grey
    and labelled "(unreliable)" for a type the table marks unreliable: a label the component's colour map
    does not know would be drawn in Gradio's own red (the old "name (count)" labels were)."""
    from models.constants import LESIONS
    from workbench.reports.render import UNRELIABLE_COLOUR, unreliable_label

    client, _ = served
    result = client.predict(handle_file(fundus_file), False, api_name="/analyze")
    lesions, table = result[2], result[4]
    assert lesions["annotations"]
    colours = {lesion.name: lesion.colour for lesion in LESIONS}
    colours |= {unreliable_label(lesion.name): UNRELIABLE_COLOUR for lesion in LESIONS}  # greyed types
    unreliable = {row[0][-3:-1] for row in table["data"] if row[-1] not in ("reliable", "n/a")}  # codes
    by_code = {lesion.name: lesion.code for lesion in LESIONS}
    for layer in lesions["annotations"]:
        code = by_code[layer["label"].removesuffix(" (unreliable)")]
        assert layer["label"].endswith("(unreliable)") == (code in unreliable), (layer["label"], unreliable)
        name = layer["label"]
        assert name in colours, name
        rgba = np.asarray(Image.open(layer["image"]).convert("RGBA"))
        drawn = rgba[rgba[..., 3] > 0][:, :3]
        assert len(drawn) and (drawn == colours[name]).all(), (layer["label"], drawn[:3])


def test_compare_endpoint_structure(served, fundus_file: str) -> None:
    client, _ = served
    gallery, slider, curves, scores, target, left, right = client.predict(
        handle_file(fundus_file), "referable", ["gradcam", "attention"], "tiny_grader", api_name="/compare"
    )
    assert len(gallery) == 2 and "deletion" in gallery[0]["caption"] and "scored in" in gallery[0]["caption"]
    assert len(slider) == 2
    assert (left, right) == ("gradcam", "lesions")  # the menus name what the slider shows
    assert [row[0] for row in scores["data"]] == ["gradcam", "attention"]
    # every score column says which way is better (or what 1 means); the time scoring took comes last
    assert scores["headers"][1] == "seconds" and scores["headers"][-1] == "scoring seconds"
    assert all("better" in title or "= hit" in title for title in scores["headers"][2:-1]), scores["headers"]
    assert all(row[-1] > 0 for row in scores["data"])  # each map's scoring took measurable time
    assert target.startswith("referable")
    # the slider shows any two of the maps this comparison made (the menus offer only those)
    pair = client.predict("attention", "image", api_name="/slide")
    assert len(pair) == 2 and all(isinstance(p, str) and Path(p).is_file() for p in pair), pair


def test_compare_says_when_it_explains_a_photograph_that_is_not_gradeable(served, tmp_path: Path) -> None:
    client, _ = served
    photo = tmp_path / "holiday.png"
    Image.new("RGB", (400, 300), (120, 170, 230)).save(photo)
    *_, target, _left, _right = client.predict(
        handle_file(str(photo)), "referable", ["attention"], "tiny_grader", api_name="/compare"
    )
    assert "NOT GRADEABLE" in target


def test_compare_refuses_attention_for_a_lesion_at_once(served, fundus_file: str) -> None:
    """The grader's own maps explain grades: asked for a lesion, the validator says so before any map
    runs (its words, not the explainer's, which used to fail after the other maps' seconds), naming the
    lesion in words."""
    client, _ = served
    said = r"attention: the grader's own maps explain grades, not lesion MA \(microaneurysms\)"
    with pytest.raises(Exception, match=said):
        client.predict(
            handle_file(fundus_file),
            "lesion:MA",
            ["gradcam", "attention"],
            "tiny_grader",
            api_name="/compare",
        )
    gallery, *_ = client.predict(
        handle_file(fundus_file), "lesion:MA", ["gradcam"], "tiny_grader", api_name="/compare"
    )
    assert len(gallery) == 1  # the app goes on serving


def test_corrupt_upload_errors_and_app_keeps_serving(served, tmp_path: Path, fundus_file: str) -> None:
    client, _ = served
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(Exception, match="truncated or corrupt|not a recognised image"):
        client.predict(handle_file(str(bad)), False, api_name="/analyze")
    summary, *_ = client.predict(handle_file(fundus_file), False, api_name="/analyze")
    assert "DR grade" in summary


def test_a_dicom_photograph_is_analysed_like_its_pixels(served, tmp_path: Path) -> None:
    """A camera's DICOM export (JPEG Baseline inside) goes through the upload box and grades; no patient
    field of the file reaches what the app returns."""
    from workbench.io.synthetic import dicom_bytes

    client, _ = served
    pixels = make_fundus(4, size=(356, 536), dr_grade=3, dme_grade=2).image
    dicom = tmp_path / "eye.dcm"
    dicom.write_bytes(dicom_bytes(pixels, jpeg=True))
    summary, plot, *_, report = client.predict(handle_file(str(dicom)), False, api_name="/analyze")
    assert "DR grade" in summary and report["graded"] and plot is not None
    assert report["source"]["format"] == "DICOM" and report["source"]["mode"].startswith("YBR_FULL_422")
    text = str(report) + summary
    assert "Synthetic" not in text and "SYN-0001" not in text


def test_non_fundus_is_reported_not_graded(served, tmp_path: Path) -> None:
    client, _ = served
    photo = tmp_path / "holiday.png"
    Image.new("RGB", (400, 300), (120, 170, 230)).save(photo)
    summary, *_, report = client.predict(handle_file(str(photo)), False, api_name="/analyze")
    assert "Not gradeable" in summary and report["graded"] is False


def test_browse_and_inspect(served, served_idrid: Path, fundus_file: str) -> None:
    client, _ = served
    truth, predicted, text = client.predict("IDRiD_01", api_name="/browse")
    assert Path(truth).is_file() and "Annotated:" in text
    assert "| lesion | Dice on this image |" in text  # per-image agreement with the annotation
    assert "Ground-truth grades" in text  # a synthetic folder has no mapping table: said, not guessed
    with pytest.raises(Exception, match="not in the list of choices|not a segmentation image of"):
        client.predict("nope", api_name="/browse")
    from workbench.io.idrid import IDRiD

    first = IDRiD(served_idrid).grading("train")[0]
    marks, table = client.predict(first.name, api_name="/browse_graded")
    assert Path(marks).is_file()
    assert "| DR grade | " in table and f"| {first.dr_grade} (" in table  # IDRiD's grade beside ours
    assert "px off" in table  # landmark errors against the annotated centres
    crop, report = client.predict(handle_file(fundus_file), "ben_graham", api_name="/inspect")
    assert Path(crop).is_file()
    assert "| focus |" in report and ">= 5" in report  # each measure beside its limit
    assert ">= 256" in report  # the field of view's diameter too
    assert "Ben Graham" in report  # what the enhancement does


def test_audit_tab_through_the_client(served, tmp_path: Path) -> None:
    import json
    import zipfile

    client, _ = served
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(5):
            image = tmp_path / f"p{i}.png"
            Image.fromarray(make_fundus(10 + i, size=(356, 536), dr_grade=i % 5, dme_grade=0).image).save(
                image
            )
            zf.write(image, f"nested/../p{i}.png")  # a hostile path is flattened, not followed
    labels = tmp_path / "labels.csv"
    labels.write_text("id_code,diagnosis\n" + "".join(f"p{i},{i % 5}\n" for i in range(5)))
    summary, roc, reliability, confusion, recall, html, per_image, figures = client.predict(
        handle_file(str(archive)), handle_file(str(labels)), "", api_name="/audit"
    )
    assert "5 labelled images" in summary and "aptos" in summary
    assert figures["n"] == 5 and figures["labels_format"] == "aptos"
    assert Path(html).read_text().count("plotly") > 0
    assert Path(per_image).read_text().splitlines()[0].startswith("image,dr_true")
    assert roc is not None and json.loads(roc["plot"])["data"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,grade\np0,1\n")
    # the tab's validator answers an API call too: the one-line message, which names the formats
    with pytest.raises(Exception, match="columns name,grade are not a label format"):
        client.predict(handle_file(str(archive)), handle_file(str(bad)), "", api_name="/audit")


def test_analyze_offers_its_report_without_analysing_again(
    tiny_workbench, fundus_file: str, monkeypatch
) -> None:
    import gradio as gr

    from workbench.ui import handlers as module
    from workbench.ui.handlers import Handlers

    handlers = Handlers(tiny_workbench, None)
    with pytest.raises(gr.Error, match="run Analyze"):  # nothing analysed yet: said, not an empty box
        handlers.analysis_report(fundus_file, False)
    summary, *_ = handlers.analyze(fundus_file, False)
    calls = []
    original = tiny_workbench.analyze
    monkeypatch.setattr(tiny_workbench, "analyze", lambda *a, **k: calls.append(a) or original(*a, **k))
    page = Path(handlers.analysis_report(fundus_file, False))
    assert not calls  # the analysis /analyze made, not a second one
    text = page.read_text()
    assert text.startswith("<!doctype html>") and "data:image/png;base64," in text and "DR grade" in text
    with pytest.raises(gr.Error):  # a forced analysis is another analysis
        handlers.analysis_report(fundus_file, True)
    # only the latest RECENT_REPORTS are kept; an older one's folder is deleted
    monkeypatch.setattr(module, "RECENT_REPORTS", 1)
    monkeypatch.setattr(tiny_workbench, "analyze", original)
    handlers.analyze(fundus_file, True)
    assert not page.exists() and Path(handlers.analysis_report(fundus_file, True)).is_file()


def test_uploads_are_checked_and_previewed_at_upload(tiny_workbench, tmp_path: Path, fundus_file) -> None:
    from workbench.ui.handlers import NO_UPLOAD, PREVIEW_SIDE, Handlers

    handlers = Handlers(tiny_workbench, None)
    text = tmp_path / "notes.jpg"
    text.write_text("not a photograph")
    assert "not a recognised image" in handlers.upload_problem(str(text))
    assert handlers.upload_problem(None) == NO_UPLOAD
    assert handlers.upload_problem(fundus_file) is None
    preview = handlers.preview(fundus_file)
    assert preview.dtype == np.uint8 and preview.shape[2] == 3 and max(preview.shape[:2]) <= 2 * PREVIEW_SIDE
    assert handlers.preview(None) is None
    # the old results go at a new upload; a bad one is named where the summary goes, and stays there
    assert handlers.cleared(str(text))[0].startswith("**This file cannot be analysed.** notes.jpg: not a")
    assert handlers.cleared(fundus_file) == ("", None, None, None, None, None) == handlers.cleared(None)
    with pytest.warns(UserWarning, match="not a recognised image"):
        assert handlers.preview(str(text)) is None  # outside an event gr.Warning is a Python warning


def test_batch_endpoint_keeps_going_past_a_bad_file(served, tmp_path: Path, fundus_file: str) -> None:
    client, _ = served
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    from workbench.io.synthetic import dicom_bytes

    same_name = tmp_path / "fundus.dcm"  # the same stem as fundus.png: its report must not replace that one
    same_name.write_bytes(dicom_bytes(np.asarray(Image.open(fundus_file).convert("RGB")), jpeg=True))
    table, summary_csv, archive = client.predict(
        [handle_file(fundus_file), handle_file(str(bad)), handle_file(str(same_name))], api_name="/batch"
    )
    # the columns of before keep their places; the reasons came last
    assert table["headers"][3:7] == ["DR grade", "referable DR", "DME risk", "fovea"]
    assert table["headers"][8:] == ["why not gradeable", "eye", "P(grade)", "P(referable)", "uncertain grade"]
    good, broken, dicom = table["data"]
    assert dicom[1] == "ok"
    # the eye from the landmarks; the camera export's ImageLaterality (R) is set beside it
    assert good[9] in ("right", "left", "undetermined")
    assert dicom[9] in (f"{good[9]} (the file says right)", f"MISMATCH: {good[9]}, the file says right")
    assert good[1] == "ok" and (good[6] == "found" or good[6].startswith("doubtful"))
    assert bool(good[8]) is (good[2] is not True)  # the reasons exactly when it is not gradeable
    assert broken[1] == "error" and "broken.jpg" in broken[7] and broken[10:] == [None, None, None]
    # the grade's own probability and the referable one; the runner-up named exactly when it is below 0.6
    assert 0.2 <= good[10] <= 1 and 0 <= good[11] <= 1
    assert bool(good[12]) is (good[10] < 0.6)
    assert not good[12] or f"grade {good[3]} ({good[10]:.2f})" in good[12]
    header = Path(summary_csv).read_text().splitlines()[0]
    assert header.endswith(
        "dme_grade,fovea,error,quality_reasons,eye,eye_file_says,eye_agrees_with_file,"
        "dr_grade_probability,referable_probability,grade_uncertain"
    )
    import csv

    with open(summary_csv, newline="") as handle:
        written = {row["file"]: row for row in csv.DictReader(handle)}
    verdict = "" if dicom[9].startswith("undetermined") else str(not dicom[9].startswith("MISMATCH"))
    assert (written["fundus.dcm"]["eye_file_says"], written["fundus.dcm"]["eye_agrees_with_file"]) == (
        "right",
        verdict,
    )
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        folders = {Path(n).parts[0] for n in zf.namelist() if n.endswith("report.json")}
    assert folders == {"fundus.png", "fundus.dcm"}  # one report each


def test_audit_inputs_are_checked_before_anything_runs(tmp_path: Path) -> None:
    """The checks that need no unpacking name the bad box (the Audit tab's validator): no CSV, an unknown
    header, an empty CSV, a file that is not a zip, no photographs at all."""
    import zipfile

    from workbench.ui.audit_tab import audit_input_problems

    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("p0.png", b"")
    good, bad, empty, text = (tmp_path / n for n in ("good.csv", "bad.csv", "empty.csv", "notes.zip"))
    good.write_text("image,dr_grade\np0,1\n")
    bad.write_text("file,grade\np0,1\n")
    empty.write_text("")
    text.write_text("not a zip")
    assert audit_input_problems(str(archive), str(good), None, None) == (None, None)
    assert "labels CSV" in audit_input_problems(str(archive), None, None, None)[1]
    # on the upload box one short line (a narrow window cut the full list of formats off); in full for
    # an API caller
    assert audit_input_problems(str(archive), str(bad), None, None)[1] == (
        "bad.csv: columns file,grade are not a label format (ours, IDRiD, APTOS or EyePACS)."
    )
    assert "no recognised label columns" in audit_input_problems(str(archive), str(bad), None, None, False)[1]
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"measurement_{i}" for i in range(40)) + "\n" + ",".join(["1"] * 40) + "\n")
    assert audit_input_problems(str(archive), str(wide), None, None)[1] == (
        "wide.csv: columns measurement_0,measurement_1,measurement_2,... (40 columns) are not a label format "
        "(ours, IDRiD, APTOS or EyePACS)."
    )
    assert "is empty" in audit_input_problems(str(archive), str(empty), None, None)[1]
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"image,dr_grade\ncaf\xe9,1\n")  # one line for the box; the codec's words for the API
    assert audit_input_problems(str(archive), str(latin), None, None)[1] == (
        "latin.csv is not UTF-8 text: save it as CSV UTF-8"
    )
    assert (
        "can't decode byte 0xe9" in audit_input_problems(str(archive), str(latin), None, None, brief=False)[1]
    )
    assert "not a readable zip" in audit_input_problems(str(text), str(good), None, None)[0]
    assert "Upload a zip" in audit_input_problems(None, str(good), "", None)[0]
    assert audit_input_problems(None, str(good), "sub", tmp_path) == (None, None)  # a folder under the root


def test_compare_explains_the_grade_the_chosen_grader_predicts(tmp_path: Path, fundus_file: str) -> None:
    """ "Predicted grade" in Compare is the chosen grader's prediction, not the default grader's, and the
    target says whose it is."""
    import torch

    from models.registry import load_model, save_model
    from tests.conftest import write_tiny_weights
    from workbench.analysis import Workbench
    from workbench.ui.handlers import Handlers

    folder = write_tiny_weights(tmp_path / "weights")
    model, card = load_model("tiny_grader", folder)
    with torch.no_grad():
        model.dr_head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 50.0]))  # this one always says grade 4
    save_model(model, card.with_updates(weights="tiny_grader_four.safetensors"), folder, half=False)
    handlers = Handlers(Workbench(grader="tiny_grader", weights_dir=folder), None)
    default_grade = handlers.workbench.analyze(fundus_file, force=True).dr_grade
    assert default_grade != 4  # else the test could not tell whose prediction was explained
    *_, target, _, _ = list(handlers.compare(fundus_file, "predicted", ["attention"], "tiny_grader_four"))[-1]
    assert target.startswith("DR grade 4") and "predicted by tiny_grader_four" in target
    *_, target, _, _ = list(handlers.compare(fundus_file, "predicted", ["attention"], ""))[-1]
    assert target.startswith(f"DR grade {default_grade}") and "predicted by tiny_grader" in target


def test_a_mistyped_data_folder_stops_the_launch_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`app.py --data` with a path that is not a folder exits 2 naming it, before any model loads (it
    used to drop the Dataset browser tab silently)."""
    from workbench.ui.serve import main

    with pytest.raises(SystemExit) as exited:
        main(["--data", str(tmp_path / "idrid-lyte")])
    assert exited.value.code == 2 and "idrid-lyte: no such folder" in capsys.readouterr().err


def test_compare_shows_each_map_before_scoring_it(tmp_path: Path, fundus_file: str) -> None:
    """Each map reaches the gallery as soon as it is computed ("scoring..."), and again with its scores and
    how long scoring took; a lesion target (no grader output to score) is shown once, unscored."""
    from tests.conftest import write_tiny_weights
    from workbench.analysis import Workbench
    from workbench.ui.handlers import Handlers
    from workbench.ui.scores_table import SCORE_TABLE_HEADERS

    folder = write_tiny_weights(tmp_path / "weights")
    handlers = Handlers(Workbench(grader="tiny_grader", weights_dir=folder), None)
    steps = list(handlers.compare(fundus_file, "referable", ["gradcam", "attention"], ""))
    assert len(steps) == 4  # map, scores; map, scores
    gallery, _, curves, table = steps[0][:4]
    assert len(gallery) == 1 and gallery[0][1].endswith("scoring...") and curves is None
    assert table[0][2:] == [None] * (len(SCORE_TABLE_HEADERS) - 2)
    gallery, _, curves, table = steps[1][:4]
    assert "scored in" in gallery[0][1] and "deletion" in gallery[0][1] and curves is not None
    assert isinstance(table[0][2], float) and table[0][-1] > 0
    assert len(steps[2][0]) == 2 and steps[2][0][1][1].endswith("scoring...")  # the second map, unscored
    assert len(steps[3][3]) == 2 and all(len(row) == len(SCORE_TABLE_HEADERS) for row in steps[3][3])
    lesion = list(handlers.compare(fundus_file, "lesion:EX", ["gradcam"], ""))
    assert len(lesion) == 1 and "scoring" not in lesion[0][0][0][1]
    assert lesion[0][3][0][2:] == [None] * (len(SCORE_TABLE_HEADERS) - 2)
