"""The drwb face: bench prints one JSON object with the measured medians."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
