"""Audit of a grader on any labelled folder: label formats, bad CSVs, identity with the IDRiD-layout
evaluation, unreadable images, operating points and the report files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.io.synthetic import make_fundus
from workbench.reports.audit import LabelsError, read_labels
from workbench.reports.audit.figures import binary_reliability, operating_points

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit")
    for i in range(6):
        fundus = make_fundus(i, size=(356, 536), dr_grade=i % 5, dme_grade=0)
        Image.fromarray(fundus.image).save(out / f"img{i}.jpg")
    (out / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return out


def _csv(folder: Path, text: str, name: str = "labels.csv") -> Path:
    path = folder.parent / f"{folder.name}-{name}"
    path.write_text(text)
    return path


def test_four_label_formats(folder: Path) -> None:
    ours = read_labels(_csv(folder, "image,dr_grade,dme_grade\nimg0.jpg,0,0\nimg1,1,\n"), folder)
    assert ours.format == "drwb" and [i.dr_grade for i in ours.images] == [0, 1]
    assert ours.images[1].dme_grade is None and "img2.jpg" in ours.unlabelled
    aptos = read_labels(_csv(folder, "id_code,diagnosis\nimg2,2\nimg3,3\n", "a.csv"), folder)
    assert aptos.format == "aptos" and [i.name for i in aptos.images] == ["img2", "img3"]
    eyepacs = read_labels(_csv(folder, "image,level\nimg4,4\n", "e.csv"), folder)
    assert eyepacs.format == "eyepacs" and eyepacs.images[0].dr_grade == 4
    # IDRiD's grading CSV as distributed: spaces, a trailing blank in a header, empty trailing columns
    text = "Image name,Retinopathy grade,Risk of macular edema ,,\nimg0,3,2,,\nimg5,0,0,,\n"
    idrid = read_labels(_csv(folder, text, "i.csv"), folder)
    assert idrid.format == "idrid" and [(i.dr_grade, i.dme_grade) for i in idrid.images] == [(3, 2), (0, 0)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,grade\nimg0,1\n", "no recognised label columns"),
        ("image,dr_grade\nimg0,7\nimg1,x\n", "2 row(s) with invalid grades"),
        ("image,dr_grade,dme_grade\nimg0,1,3\n", "DME grade '3' is not 0-2"),
        ("image,dr_grade\nimg0,1\nimg0.jpg,2\n", "duplicate row"),
        ("image,dr_grade\n" + "".join(f"gone{i},1\n" for i in range(8)), "8 row(s) name files not in"),
        ("image,dr_grade\nimg0,1\ngone,2\nimg0.jpg,2\n", "duplicate row"),  # the duplicate, not the gone
    ],
)
def test_bad_labels_name_the_rows(folder: Path, text: str, message: str) -> None:
    with pytest.raises(LabelsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_labels(_csv(folder, text, "bad.csv"), folder)


def test_rows_without_a_photograph_are_ignored_and_counted(folder: Path) -> None:
    """A master labels file against a sample of its photographs: the rows naming no file are reported,
    not an error (the Audit tab refused IDRiD's own 413-row CSV with 8 photographs)."""
    labels = read_labels(_csv(folder, "image,dr_grade\nimg0,1\ngone3,2\nimg1,0\n", "master.csv"), folder)
    assert [i.name for i in labels.images] == ["img0", "img1"]
    assert labels.without_image == ("line 3: gone3",)
    with pytest.raises(LabelsError, match="not in the zip, and no row names a photograph there"):
        read_labels(_csv(folder, "image,dr_grade\ngone3,2\n", "none.csv"), folder, where="the zip")


def test_many_offending_rows_are_summarised(folder: Path) -> None:
    text = "image,dr_grade\n" + "".join(f"gone{i},1\n" for i in range(8))
    with pytest.raises(LabelsError) as info:
        read_labels(_csv(folder, text, "many.csv"), folder)
    assert "and 3 more" in str(info.value) and "gone7" not in str(info.value)


def _drwb(*args: str, weights: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DRWB_WEIGHTS": str(weights)}
    return subprocess.run(
        [sys.executable, "drwb.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_malformed_csv_exits_2_without_traceback(folder: Path, tiny_weights: Path) -> None:
    bad = _csv(folder, "file,grade\nimg0,1\n", "cli.csv")
    out = _drwb(
        "evaluate", "--task", "grading", "--data", str(folder), "--labels", str(bad), weights=tiny_weights
    )
    assert out.returncode == 2
    assert "no recognised label columns" in out.stderr and "Traceback" not in out.stderr


def test_cli_audit_reports_unreadable_image_and_writes_report(
    folder: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    labels = _csv(
        folder,
        "image,dr_grade,dme_grade\n" + "".join(f"img{i},{i % 5},0\n" for i in range(6)) + "broken,2,1\n",
        "ok.csv",
    )
    report = tmp_path / "audit.html"
    out = _drwb(
        "evaluate",
        "--task",
        "grading",
        "--data",
        str(folder),
        "--labels",
        str(labels),
        "--report",
        str(report),
        "--json",
        weights=tiny_weights,
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert figures["n"] == 7 and figures["n_unreadable"] == 1
    assert figures["unreadable"][0]["image"] == "broken"
    assert figures["n_graded"] + figures["n_ungradeable"] == 6
    html = report.read_text()
    assert "plotly" in html and "Referable DR operating points" in html
    assert (tmp_path / "per_image.csv").read_text().count("\n") == 8  # header + 7 rows


def test_same_figures_as_idrid_layout_evaluation(tmp_path: Path, tiny_weights: Path, monkeypatch) -> None:
    """The IDRiD-layout evaluation and the any-folder audit grade identically, to the last digit."""
    from training.evaluate import evaluate
    from workbench.analysis import Workbench
    from workbench.io.idrid import IDRiD
    from workbench.io.splits import split_train_val
    from workbench.io.synthetic import write_idrid_folder
    from workbench.reports.audit import run_audit

    monkeypatch.setenv("DRWB_WEIGHTS", str(tiny_weights))
    data = write_idrid_folder(tmp_path / "idrid", n_segmentation=1, n_grading=12)
    records = IDRiD(data).grading("train")
    val = set(split_train_val(records, 0.2, 0).val)
    chosen = [r for r in records if r.name in val]
    lines = ["image,dr_grade,dme_grade"] + [f"{r.image_path.name},{r.dr_grade},{r.dme_grade}" for r in chosen]
    labels_path = tmp_path / "labels.csv"
    labels_path.write_text("\n".join(lines) + "\n")
    reference = evaluate(data, "val", "grading", "tiny_grader")
    figures, _, _ = run_audit(
        Workbench(weights_dir=tiny_weights, segment=False),
        read_labels(labels_path, chosen[0].image_path.parent),
    )
    assert figures["n_graded"] == reference["n"] == len(chosen)
    for key in ("dr_accuracy", "dr_qwk", "dme_accuracy", "joint_accuracy", "referable_auc"):
        assert figures["grading"][key] == reference[key], key
    assert figures["grading"]["confusion_matrix"] == reference["confusion_matrix"]


def test_operating_points_reach_their_sensitivity() -> None:
    labels = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.55, 0.45, 0.3, 0.2, 0.5, 0.4, 0.25, 0.1, 0.05])
    points = {p["name"]: p for p in operating_points(labels, scores)}
    assert points["operating (p >= 0.5)"]["sensitivity"] == pytest.approx(0.7)
    assert points["operating (p >= 0.5)"]["specificity"] == pytest.approx(0.8)
    ninety = points["90% sensitivity"]
    assert ninety["threshold"] == pytest.approx(0.3) and ninety["sensitivity"] == pytest.approx(0.9)
    assert ninety["specificity"] == pytest.approx(0.6)  # 0.25, 0.1, 0.05 below 0.3


def test_binary_reliability_hand_computed() -> None:
    # bin (0.1, 0.2]: p 0.15, 0.15 -> observed 0/2; bin (0.8, 0.9]: p 0.85 x2 -> observed 1/2
    result = binary_reliability(np.array([0.15, 0.15, 0.85, 0.85]), np.array([0, 0, 1, 0]))
    # ECE = 2/4 * |0 - 0.15| + 2/4 * |0.5 - 0.85| = 0.075 + 0.175
    assert result["ece"] == pytest.approx(0.25)
    assert result["counts"][1] == 2 and result["counts"][8] == 2


def test_dme_and_joint_accuracy_carry_intervals_over_dme_labelled_images() -> None:
    """The audit's DME and joint accuracy come with bootstrap intervals, like the DR figures, and ignore
    images that have no DME label."""
    from workbench.reports.audit import GradedImage
    from workbench.reports.audit.figures import audit_figures

    rng = np.random.default_rng(0)
    graded = []
    for i in range(60):
        dr, dme = i % 5, (i % 3 if i % 4 else None)  # every fourth image without a DME label
        p_dr, p_dme = np.full(5, 0.05), np.full(3, 0.1)
        p_dr[dr if rng.random() < 0.7 else (dr + 1) % 5] = 0.8
        p_dme[(dme or 0) if rng.random() < 0.8 else 2] = 0.8
        graded.append(GradedImage(f"i{i}", Path(f"i{i}.png"), dr, dme, True, (), "", p_dr, p_dme))
    grading = audit_figures(graded)["grading"]
    for key in ("dme_accuracy", "joint_accuracy"):
        low, high = grading["ci95"][key]
        assert low < grading[key] < high and high - low < 0.5, (key, low, grading[key], high)
    assert grading["dme_labelled"] == 45


@pytest.mark.parametrize("referable", [True, False])
def test_a_cohort_of_one_referral_class_gets_its_report(tmp_path: Path, referable: bool) -> None:
    """Every image referable (a referral clinic) or none: no specificity (or sensitivity) exists; the
    figures say n/a and the plots and the HTML report are still made."""
    from workbench.reports.audit import GradedImage
    from workbench.reports.audit.figures import audit_figures
    from workbench.reports.audit.report import audit_plots, write_audit_report

    graded = []
    for i in range(12):
        dr = (2 + i % 3) if referable else i % 2
        p_dr = np.full(5, 0.05)
        p_dr[(dr + i % 2) % 5] = 0.8
        graded.append(
            GradedImage(f"i{i}", Path(f"i{i}.png"), dr, 0, True, (), "", p_dr, np.array([0.8, 0.1, 0.1]))
        )
    figures = audit_figures(graded)
    missing = "specificity" if referable else "sensitivity"
    assert figures["grading"][f"referable_{missing}"] is None
    assert set(audit_plots(figures)) >= {"roc", "reliability"}
    written = write_audit_report(figures, graded, {}, tmp_path / "report", tmp_path / "audit.html")
    assert "n/a" in written["html"].read_text()


def test_an_audit_names_the_photographs_its_grader_trained_on(tmp_path: Path, tiny_weights: Path) -> None:
    """`drwb provenance` records the files a grader trained on in its card; an audit of a folder holding
    some of them flags those, gives the figures on the others, and says "unknown" for a card without."""
    import csv
    import json
    import shutil

    from workbench.analysis import Workbench
    from workbench.io.idrid import IDRiD
    from workbench.io.synthetic import write_idrid_folder
    from workbench.provenance import TRAINED_FILES_KEY, record_trained_files, trained_grading_names
    from workbench.reports.audit import run_audit, write_audit_report
    from workbench.reports.audit.figures import training_overlap_note

    data = write_idrid_folder(tmp_path / "idrid", n_segmentation=1, n_grading=8)
    dataset = IDRiD(data)
    records = dataset.grading("train")
    lines = ["image,dr_grade,dme_grade"] + [
        f"{r.image_path.name},{r.dr_grade},{r.dme_grade}" for r in records
    ]
    labels = read_labels(_csv(tmp_path / "x", "\n".join(lines) + "\n"), records[0].image_path.parent)
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    card_path = weights / "tiny_grader.json"
    card = json.loads(card_path.read_text())
    figures, graded, overlays = run_audit(Workbench(weights_dir=weights, segment=False), labels, worst=0)
    assert figures["seen_in_training"] is None and "unknown" in training_overlap_note(figures)

    card["training"]["config"] = {"fold": 0, "folds": 2, "seed": 0}  # trained on the other fold
    card_path.write_text(json.dumps(card))
    trained = trained_grading_names(Workbench(weights_dir=weights, segment=False).grader.card, dataset)
    assert 0 < len(trained) < len(records)
    assert record_trained_files(card_path, dataset) == len(trained)
    with pytest.raises(ValueError, match="only graders"):
        record_trained_files(weights / "tiny_localizer.json", dataset)
    assert len(json.loads(card_path.read_text())["training"][TRAINED_FILES_KEY]) == len(trained)

    figures, graded, overlays = run_audit(Workbench(weights_dir=weights, segment=False), labels, worst=0)
    assert sorted(figures["seen_in_training"]["images"]) == sorted(
        r.name for r in records if r.name in trained
    )
    assert figures["grading_not_trained_on"]["n"] == len(records) - len(trained)
    assert f"{len(trained)} of the {len(records)} photographs" in training_overlap_note(figures)
    written = write_audit_report(figures, graded, overlays, tmp_path / "report", tmp_path / "audit.html")
    assert "training-overlap" in written["html"].read_text()
    with written["csv"].open(newline="") as handle:
        flags = {row["image"]: row["grader_trained_on_it"] for row in csv.DictReader(handle)}
    assert sum(flag == "True" for flag in flags.values()) == len(trained)

    # the same photograph at 3/4 of its size under another name: another file, recognised by fingerprint
    first = next(r for r in records if r.name in trained)
    with Image.open(first.image_path) as image:
        image.resize((image.width * 3 // 4, image.height * 3 // 4)).save(first.image_path.parent / "copy.png")
    copy_labels = _csv(tmp_path / "y", f"image,dr_grade\ncopy.png,{first.dr_grade}\n")
    figures, _, _ = run_audit(
        Workbench(weights_dir=weights, segment=False), read_labels(copy_labels, first.image_path.parent)
    )
    assert figures["seen_in_training"]["images"] == ["copy"]
    # a folder where nothing can be graded (a thumbnail) still gets its figures, none of them grades
    with Image.open(first.image_path) as image:
        image.resize((64, 43)).save(first.image_path.parent / "thumb.png")
    thumb_labels = _csv(tmp_path / "z", "image,dr_grade\nthumb.png,2\n")
    figures, _, _ = run_audit(
        Workbench(weights_dir=weights, segment=False), read_labels(thumb_labels, first.image_path.parent)
    )
    assert figures["n_graded"] == 0 and figures["n_ungradeable"] == 1 and "grading" not in figures


def test_a_fingerprint_knows_a_photograph_at_another_size_and_quality_and_tells_others_apart() -> None:
    """The same synthetic fundus at a quarter of its size and as a low-quality JPEG stays within
    ``FINGERPRINT_MAX_BITS`` of itself; other fundi (same generator, other seeds) are far beyond it."""
    import cv2

    from workbench.fundus import prepare_fundus
    from workbench.io.image_io import LoadedImage
    from workbench.io.synthetic import make_fundus
    from workbench.provenance import FINGERPRINT_MAX_BITS, fundus_fingerprint

    def fingerprint(rgb: np.ndarray, original: tuple[int, int]) -> np.ndarray:
        crop = prepare_fundus(LoadedImage(rgb, original, "JPEG", "RGB", "x"), 512).crop
        return np.unpackbits(np.frombuffer(bytes.fromhex(fundus_fingerprint(crop)), np.uint8))

    eye = make_fundus(11, size=(712, 1072), dr_grade=3).image
    reference = fingerprint(eye, (712, 1072))
    assert reference.size == 256
    small = cv2.resize(eye, (268, 178), interpolation=cv2.INTER_AREA)
    _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(eye, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 40])
    recoded = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    for copy in (fingerprint(small, (712, 1072)), fingerprint(recoded, (712, 1072))):
        assert (copy != reference).sum() <= FINGERPRINT_MAX_BITS
    for seed in (12, 13, 14):
        other = fingerprint(make_fundus(seed, size=(712, 1072), dr_grade=3).image, (712, 1072))
        assert (other != reference).sum() > 3 * FINGERPRINT_MAX_BITS
