"""The Ray engine against the local one: same summaries (with a corrupt file), resumable, bounded time.

Ray runs embedded with 2 CPUs, as on this machine; every test has a timeout, because a mis-sized actor
pool does not fail, it waits forever.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from workbench.engines.ray_engine import READ_RESERVE, pool_size
from workbench.io.synthetic import make_fundus
from workbench.reports.batch import content_sha256

pytest.importorskip("ray")


def test_pool_never_reserves_the_last_half_cpu() -> None:
    actors, cpus, gpus = pool_size(2.0)
    assert actors == 2 and actors * cpus <= 2.0 - READ_RESERVE + 1e-9 and gpus == 0
    assert pool_size(0.5)[0] == 1 and pool_size(16.0, 2.0)[:1] == (2,)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archive")
    for i in range(4):
        Image.fromarray(make_fundus(40 + i, size=(356, 536), dr_grade=i % 5).image).save(
            folder / f"eye{i}.png"
        )
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def _rows(summary: Path) -> list[dict[str, str]]:
    with summary.open(newline="") as handle:
        rows = [{k: v for k, v in row.items() if k != "report"} for row in csv.DictReader(handle)]
    return sorted(rows, key=lambda r: r["file"])


@pytest.mark.timeout(420)
def test_ray_and_local_engines_agree_and_ray_resumes(
    archive: Path, tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from workbench.analysis import Workbench
    from workbench.engines.ray_engine import analyze_with_ray
    from workbench.reports.batch import analyze_files

    monkeypatch.setenv("DRWB_WEIGHTS", str(tiny_weights))  # inherited by the Ray workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one start for both runs
    analyze_files(Workbench(weights_dir=tiny_weights), [str(archive)], tmp_path / "local", ["attention"])
    # a first Ray run that stops after two images (as if killed), then the same command again
    first = analyze_with_ray(
        [str(archive / "eye0.png"), str(archive / "eye1.png")], tmp_path / "ray", ["attention"], num_cpus=2
    )
    assert len(first) == 2
    # as if that first run were an older version's, whose summary.csv lacked the last seven columns
    summary = tmp_path / "ray" / "summary.csv"
    with summary.open(newline="") as handle:
        old = [row[:-7] for row in csv.reader(handle)]
    assert old[0][-1] == "report"
    with summary.open("w", newline="") as handle:
        csv.writer(handle).writerows(old)
    kept = (tmp_path / "ray" / "eye0" / "report.json").stat().st_mtime_ns
    second = analyze_with_ray([str(archive)], tmp_path / "ray", ["attention"], num_cpus=2)
    assert sorted(Path(r["file"]).name for r in second) == ["corrupt.jpg", "eye2.png", "eye3.png"]
    assert (tmp_path / "ray" / "eye0" / "report.json").stat().st_mtime_ns == kept  # not rewritten
    local, ray_rows = _rows(tmp_path / "local" / "summary.csv"), _rows(tmp_path / "ray" / "summary.csv")
    # the resumed file kept its own columns: every row under them, none shifted
    newer = (
        *("quality_reasons", "grader", "eye", "eye_file_says", "eye_agrees_with_file"),
        *("dr_grade_probability", "grade_uncertain"),
    )
    assert ray_rows == [{k: v for k, v in row.items() if k not in newer} for row in local]
    assert {row["grader"] for row in _rows(tmp_path / "local" / "summary.csv")} == {"tiny_grader"}
    assert [r["status"] for r in ray_rows].count("error") == 1
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "ray" / "summary.parquet").num_rows == 5
    ray.shutdown()


def test_a_resumed_run_refuses_a_summary_graded_by_another_grader(tmp_path: Path) -> None:
    from workbench.engines.ray_engine import _done_files
    from workbench.reports.batch import SUMMARY_FIELDS

    summary = tmp_path / "summary.csv"
    with summary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS, restval="")
        writer.writeheader()
        writer.writerow({"file": "a.png", "sha256": "aa", "grader": "grader_a"})
        writer.writerow({"file": "b.jpg", "sha256": "bb", "status": "error", "grader": "grader_a"})
    assert _done_files(summary, "grader_a") == {("aa", "a.png"), ("bb", "b.jpg")}
    with pytest.raises(ValueError, match="holds grades by grader_a; this run grades with grader_x"):
        _done_files(summary, "grader_x")
    assert _done_files(tmp_path / "absent.csv", "grader_x") == set()
    # a summary from before the grader column: each row's grader is read from the report beside it
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text('{"models": {"grader": "grader_a"}}')
    old = tmp_path / "old.csv"
    old.write_text(f"file,sha256,status,report\na.png,aa,ok,{tmp_path / 'a' / 'report.html'}\n")
    assert _done_files(old, "grader_a") == {("aa", "a.png")}
    with pytest.raises(ValueError, match="holds grades by grader_a"):
        _done_files(old, "grader_x")


def test_a_resumed_run_skips_a_moved_photograph_but_not_a_renamed_copy(tmp_path: Path) -> None:
    """A done photograph is known by its content and its file name: moved to another folder it is skipped,
    copied under another name it is analysed anew (the name may say another eye)."""
    from workbench.engines.ray_engine import _todo

    moved = tmp_path / "moved"
    moved.mkdir()
    for name, content in (("eye0.png", b"same"), ("eye0_left.png", b"same"), ("eye1.png", b"new")):
        (moved / name).write_bytes(content)
    digest = {p.name: content_sha256(p) for p in moved.iterdir()}
    todo, skipped = _todo(sorted(moved.iterdir()), {(digest["eye0.png"], "eye0.png")})
    assert skipped == 1
    assert [Path(t["path"]).name for t in todo] == ["eye0_left.png", "eye1.png"]
    assert [t["folder"] for t in todo] == ["eye0_left", "eye1"]


def test_ray_resume_with_another_grader_stops_before_any_work(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.engines.ray_engine import analyze_with_ray

    monkeypatch.setenv("DRWB_WEIGHTS", str(tiny_weights))
    out = tmp_path / "reports"
    out.mkdir()
    (out / "summary.csv").write_text("file,sha256,status,grader\na.png,aa,ok,grader_lite0_ensemble\n")
    with pytest.raises(ValueError, match="this run grades with tiny_grader"):  # the profile's default here
        analyze_with_ray([str(tmp_path / "absent.png")], out)
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]  # nothing written, Ray never started
