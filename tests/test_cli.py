"""The drwb face: bench prints one JSON object with the measured medians."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_prints_json() -> None:
    out = subprocess.run(
        [sys.executable, "drwb.py", "bench", "--json", "--repeats", "2", "--only", "quality_verdict_512"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result = json.loads(out.stdout)
    assert result["quality_verdict_512"]["median_ms"] > 0
    assert result["quality_verdict_512"]["n"] == 2


def test_prepare_on_wrong_folder_fails_clearly(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "drwb.py", "prepare", "--data", str(tmp_path), "--parts", "grading"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "is it the IDRiD root" in out.stderr


def test_analyze_refuses_a_file_as_its_out_folder_and_makes_none_for_nothing(tmp_path: Path) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")

    def analyze(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "drwb.py", "analyze", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    out = analyze(str(taken), "--out", str(taken))
    assert out.returncode == 2 and f"--out {taken} is a file" in out.stderr and "Traceback" not in out.stderr
    assert taken.read_text() == "mine"  # nothing the user supplied is altered
    out = analyze(str(tmp_path / "none*.jpg"), "--out", str(tmp_path / "reports"))
    assert out.returncode == 2 and "no images found" in out.stderr
    assert not (tmp_path / "reports").exists()  # no empty folder left behind


def test_analyze_end_to_end_with_a_bad_file(tmp_path: Path, tiny_weights: Path) -> None:
    import os

    from PIL import Image

    from workbench.io.synthetic import make_fundus

    Image.fromarray(make_fundus(8, size=(356, 536)).image).save(tmp_path / "eye.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "reports"
    env = {**os.environ, "DRWB_WEIGHTS": str(tiny_weights)}
    env.pop("DRWB_RUNTIME", None)  # the default runtime
    result = subprocess.run(
        [
            sys.executable,
            "drwb.py",
            "analyze",
            str(tmp_path),
            "--explain",
            "gradcam,attention",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 1, result.stderr  # one file failed, the batch went on
    assert result.stdout.splitlines()[-1].startswith("2 photographs: 1 analysed, 1 could not be read · ")
    report = json.loads((out / "eye" / "report.json").read_text())
    assert report["graded"] and 0 <= report["dr_grade"] <= 4
    # what ran each model is recorded: the grader in ONNX Runtime (the default "auto"), the rest in PyTorch
    import onnxruntime

    assert report["runtimes"]["grader"] == f"onnxruntime {onnxruntime.__version__}"
    assert report["runtimes"]["segmenter"].startswith("pytorch ")
    # every network that ran says what ran it, the landmark refiners included
    assert set(report["runtimes"]) == set(report["models"]) >= {"grader", "localizer", "segmenter", "disc"}
    assert set(report["explanations"]) == {"gradcam", "attention"}
    assert "deletion_auc" in report["explanations"]["gradcam"]
    html = (out / "eye" / "report.html").read_text()
    assert "data:image/png;base64," in html and "DR grade" in html
    # readable tables in place of a raw JSON dump (the JSON stays beside the HTML)
    assert "<caption>DR grade probabilities</caption>" in html and "<caption>Explanations" in html
    assert "<pre>" not in html and "grade probability" in html and "referable probability" in html
    import csv

    with (out / "summary.csv").open(newline="") as handle:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
    assert rows["broken.jpg"]["status"] == "error" and "truncated or corrupt" in rows["broken.jpg"]["error"]
    assert len(rows["broken.jpg"]["sha256"]) == 64  # the content hash that makes batch runs resumable
    # summary.csv's figures are report.json's, unrounded
    assert float(rows["eye.png"]["referable_probability"]) == report["referable_probability"]
    for row in (r for r in rows.values() if r["dr_grade"] != ""):  # the grade's probability, and the
        # runner-up exactly when it is below 0.6 (workbench.analysis.result.UNCERTAIN_BELOW)
        probability = float(row["dr_grade_probability"])
        assert bool(row["grade_uncertain"]) is (probability < 0.6)
        assert 0 <= float(row["referable_probability"]) <= 1
    assert all(
        bool(r["quality_reasons"]) is (r["gradeable"] == "False")
        for r in rows.values()
        if r["status"] == "ok"
    )


def test_analyze_real_image_with_shipped_models(tmp_path: Path, real_idrid: Path) -> None:
    """End to end on one real IDRiD photograph with the shipped models (skipped without either)."""
    import os

    from models.registry import SHIPPED_WEIGHTS_DIR, list_shipped

    if not {"grader", "segmenter", "localizer"} <= {c.arch for c in list_shipped(SHIPPED_WEIGHTS_DIR)}:
        pytest.skip("shipped grader, segmenter and localizer are not all present")
    image = real_idrid / "A. Segmentation/1. Original Images/a. Training Set/IDRiD_01.jpg"
    env = {k: v for k, v in os.environ.items() if k != "DRWB_WEIGHTS"}
    result = subprocess.run(
        [sys.executable, "drwb.py", "analyze", str(image), "--explain", "attention", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "IDRiD_01" / "report.json").read_text())
    assert report["gradeable"] and report["graded"]
    assert (
        report["referable"] is True
    )  # IDRiD_01 has exudates and haemorrhages (= IDRiD_102: DR grade 2, DME 2)
    assert report["lesions"]["EX"]["count"] > 0


def test_train_flags_reach_the_run_and_its_card(tmp_path: Path, synthetic_idrid: Path) -> None:
    """`drwb train`: the flags become the run's TrainConfig, a --config file fills what they leave
    unset, and the shipped card records the command as typed."""
    from drwb import main

    (tmp_path / "run.yaml").write_text("tiles_per_image: 2\nbatch_size: 2\n")
    argv = [
        "train", "disc", "--data", str(synthetic_idrid), "--cache", str(tmp_path / "cache"),
        "--runs", str(tmp_path / "runs"), "--run-name", "cli", "--model-name", "test_tiny_disc",
        "--input-size", "64", "--epochs", "1", "--val-fraction", "0.25", "--no-pretrained",
        "--config", str(tmp_path / "run.yaml"), "--batch-size", "3",
        "--ship", "--ship-dir", str(tmp_path / "weights"), "--ship-name", "cli_disc",
    ]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((tmp_path / "runs/cli/state.json").read_text())["config"]
    assert config["task"] == "disc" and config["input_size"] == 64 and config["no_pretrained"] is True
    assert config["tiles_per_image"] == 2 and config["batch_size"] == 3  # the file, then the flag over it
    card = json.loads((tmp_path / "weights/cli_disc.json").read_text())
    assert card["arch"] == "disc" and card["training"]["command"].startswith("drwb train disc --data")


def test_analyze_with_a_chosen_grader_and_a_wrong_name(tmp_path: Path, tiny_weights: Path) -> None:
    """`drwb analyze --grader NAME` grades with that shipped grader (the report names it); an unknown name
    exits 2 listing the shipped graders, before anything is analysed."""
    import os
    import shutil

    from PIL import Image

    from workbench.io.synthetic import make_fundus

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    card = json.loads((weights / "tiny_grader.json").read_text())
    card["weights"] = "tiny_b.safetensors"
    (weights / "tiny_b.json").write_text(json.dumps(card))
    shutil.copy(weights / "tiny_grader.safetensors", weights / "tiny_b.safetensors")
    Image.fromarray(make_fundus(8, size=(356, 536)).image).save(tmp_path / "eye.png")
    env = {**os.environ, "DRWB_WEIGHTS": str(weights)}

    def analyze(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "drwb.py", "analyze", str(tmp_path / "eye.png"), "--no-scores", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)

    wrong = analyze("--grader", "tiny_c", "--out", str(tmp_path / "no"))
    assert wrong.returncode == 2 and "shipped graders: tiny_b, tiny_grader" in wrong.stderr
    assert not (tmp_path / "no").exists()
    chosen = analyze("--grader", "tiny_b", "--out", str(tmp_path / "out"))
    assert chosen.returncode == 0, chosen.stderr
    report = json.loads((tmp_path / "out" / "eye" / "report.json").read_text())
    assert report["models"]["grader"] == "tiny_b"
