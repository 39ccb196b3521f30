"""Streamlit viewer: AppTest with uploads (tiny models), and a real `streamlit run` health check."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from workbench.io.synthetic import dicom_bytes, make_fundus

ROOT = Path(__file__).resolve().parents[2]


def _png(seed: int, grade: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_fundus(seed, size=(356, 536), dr_grade=grade).image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def weights_env(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DRWB_WEIGHTS", str(tiny_weights))
    monkeypatch.delenv("DRWB_DATA", raising=False)
    return tiny_weights


def test_upload_table_selection_and_bad_file(weights_env: Path) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert any("Upload fundus photographs" in info.value for info in at.info)
    at.file_uploader[0].set_value(
        [
            ("eye_a.png", _png(1, 2), "image/png"),
            ("eye_b.png", _png(2, 0), "image/png"),
            ("eye_c.dcm", dicom_bytes(make_fundus(3, size=(356, 536)).image, jpeg=True), "application/dicom"),
            ("broken.jpg", b"\xff\xd8\xff\xe0 not a jpeg", "image/jpeg"),
        ]
    )
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["file"]) == ["eye_a.png", "eye_b.png", "eye_c.dcm", "broken.jpg"]
    assert table.loc[table["file"] == "broken.jpg", "quality"].item() == "error"
    assert any("broken.jpg" in error.value for error in at.error)
    assert not any("broken.jpg: broken.jpg" in error.value for error in at.error)  # named once
    assert "quality_reasons" in table.columns
    # the eye from the landmarks; the DICOM export's ImageLaterality (R) is set beside it
    graded = table[table["dr_grade"].notna()].set_index("file")["eye"]
    assert "eye_c.dcm" in graded and "the file says right" in graded["eye_c.dcm"]
    plain = graded.drop("eye_c.dcm")
    assert plain.isin(["right", "left", "undetermined"]).all()
    assert at.selectbox[0].options == ["eye_a.png", "eye_b.png", "eye_c.dcm"]  # a camera's DICOM export too
    at.selectbox[0].select("eye_b.png")
    at.run()
    assert not at.exception
    assert len(at.image) >= 1
    warnings = [w.value for w in at.warning]
    if any("Not gradeable" in w for w in warnings):  # not gradeable: the crop is shown with the reasons
        assert len(at.image) >= 1
    else:
        assert len(at.get("plotly_chart")) == 1 and len(at.image) == 4  # lesions, landmarks, 2 maps
        # the lesion table with validated AUPR and reliability; a doubtful fovea is said, with its reason
        lesions = at.dataframe[1].value
        assert list(lesions.columns)[-2:] == ["validated AUPR", "reliability"]
        assert not any("(OD)" in name for name in lesions["lesion"])
        assert all(w.startswith("Fovea doubtful (") for w in warnings)
        # the Analyze summary's headline above the pictures: grade and referral with their probabilities
        headline = [m.value for m in at.markdown if m.value.startswith("## DR grade ")]
        assert headline and "referable probability" in headline[0]


def test_folder_with_labels_csv_adds_truth_and_agreement(
    weights_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    for i in range(3):
        (tmp_path / f"eye{i}.png").write_bytes(_png(30 + i, i))
    (tmp_path / "eye3.png").write_bytes(_png(33, 3))  # no row: shown without truth, not dropped
    (tmp_path / "labels.csv").write_text("image,level\neye0,0\neye1.png,1\neye2,2\n")  # EyePACS style
    monkeypatch.setenv("DRWB_DATA", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["file"]) == ["eye0.png", "eye1.png", "eye2.png", "eye3.png"]
    assert list(table["true_dr"])[:3] == [0, 1, 2] and table["true_dr"].isna().tolist()[3]
    assert any("1 photograph(s)" in w.value and "no row in labels.csv" in w.value for w in at.warning)
    graded = table[table["dr_grade"].notna()]
    assert {"dr_agrees", "referable_agrees"} <= set(table.columns) or graded.empty
    (tmp_path / "labels.csv").write_text("image,level\neye0,9\n")
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert any("not 0-4" in error.value for error in at.error)  # a bad CSV is named, the app goes on
    (tmp_path / "labels.csv").write_bytes(b"image,level\neye0,0\ncaf\xe9,1\n")  # Latin-1, not UTF-8
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert any("is not a UTF-8 CSV text file" in error.value for error in at.error)


def test_empty_folder_is_said_not_raised(weights_env: Path, tmp_path: Path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DRWB_DATA", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert [str(tmp_path) in error.value for error in at.error] == [True]  # said once


def test_bad_idrid_labels_are_said_not_taken_for_another_layout(
    weights_env: Path, tmp_path: Path, monkeypatch
) -> None:
    """A grade 9 in an IDRiD root's CSV is named in the sidebar (IDRiDLabelsError); it used to pass for
    "not an IDRiD folder" and the photographs showed without truth, silently."""
    from streamlit.testing.v1 import AppTest

    from workbench.io.synthetic import write_idrid_folder

    root = write_idrid_folder(tmp_path / "idrid", n_segmentation=1, n_grading=2)
    (labels,) = (root / "B. Disease Grading/2. Groundtruths").glob("*Training*.csv")
    lines = labels.read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",9,0"
    labels.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("DRWB_DATA", str(root))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert any("Retinopathy grade '9' is not 0-4" in error.value for error in at.error)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_streamlit_run_health(tiny_weights: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DRWB_WEIGHTS": str(tiny_weights)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "streamlit_app.py",
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, body = time.monotonic() + 60, b""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    body = response.read()
                    break
            except OSError:
                time.sleep(0.5)
        assert body == b"ok"
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert process.returncode is not None


def test_the_viewer_caps_uploads_as_the_gradio_app_does() -> None:
    """`.streamlit/config.toml` (read by `streamlit run` from the repository root) holds the same upload
    cap as the Gradio app, which the README states once for both."""
    import tomllib

    from workbench.ui.gradio_app import MAX_UPLOAD

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert f"{config['server']['maxUploadSize']}mb" == MAX_UPLOAD.lower()
    assert config["browser"]["gatherUsageStats"] is False  # offline: no telemetry
