"""``drwb analyze --engine ray``: a screening archive through a Ray Data pipeline.

One ``Workbench`` per actor (models load once per actor, not per image) in an actor pool sized from the
resources Ray reports; each actor writes the per-image report folder exactly as the local engine does
(``workbench.reports.batch.analyze_one``) and returns the summary row. The driver appends rows to
``summary.csv`` as they arrive (so a killed run keeps what it finished), shows images/s, and at the end
writes ``summary.parquet`` beside it.

Resumable: an image whose content sha256 and file name are already in ``summary.csv`` is skipped, so
repeating a killed run's command finishes the rest without redoing or rewriting anything (a moved folder
too). A renamed copy is analysed anew: its name may say another eye (``workbench.landmarks.laterality``).
An unreadable file becomes an error row; an actor that dies is restarted by Ray and its batch retried.

Pool sizing (seen with Ray 2.60 on 2 cores): actors that each reserve a whole CPU leave none for Ray
Data's read tasks and the pipeline waits forever ("backpressured ... 0.0 CPU"). Each actor therefore
reserves a fraction, ``(cpus - READ_RESERVE) / actors``, and half a CPU stays free for reading.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from workbench.analysis.pipeline import profile_grader
from workbench.reports.batch import (
    SUMMARY_FIELDS,
    analyze_one,
    content_sha256,
    expand_inputs,
    report_folders,
)
from workbench.targets import Target

__all__ = ["READ_RESERVE", "analyze_with_ray", "pool_size"]

log = logging.getLogger(__name__)
READ_RESERVE = 0.5


def pool_size(cpus: float, gpus: float = 0.0) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for a cluster with ``cpus`` / ``gpus``.

    One actor per GPU when there are GPUs; otherwise one per whole CPU. Actors never reserve the last
    ``READ_RESERVE`` CPU (see module docstring).
    """
    if gpus >= 1:
        actors = int(gpus)
        return actors, max(0.25, (cpus - READ_RESERVE) / actors), 1.0
    actors = max(1, int(math.floor(cpus)))
    return actors, max(0.1, (cpus - READ_RESERVE) / actors), 0.0


class _AnalyzeActor:
    """Holds one Workbench; called with batches of {"path", "sha256"} rows, returns summary rows."""

    def __init__(
        self,
        out: str,
        explain: Sequence[str],
        target: Target | None,
        score: bool,
        threads: int,
        profile: str = "quality",
        grader: str | None = None,
    ) -> None:
        import torch

        from workbench.analysis import Workbench

        torch.set_num_threads(max(1, threads))
        self.workbench = Workbench(profile=profile, grader=grader)
        self.out, self.explain, self.target, self.score = Path(out), list(explain), target, score

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [
            analyze_one(
                self.workbench, Path(p), self.out, self.explain, self.target, self.score, sha256=h, folder=f
            )
            for p, h, f in zip(batch["path"], batch["sha256"], batch["folder"], strict=True)
        ]
        return {key: [_cell(row[key]) for row in rows] for key in SUMMARY_FIELDS}


def _cell(value: Any) -> str:
    """Summary cells travel as strings (one Arrow type per column, whatever the image's outcome)."""
    return "" if value is None else str(value)


def _row_grader(row: dict[str, str]) -> str:
    """The grader of a summary row: its ``grader`` cell, or for a row written before that column the
    ``models.grader`` of the report.json beside its report ("" when neither says)."""
    if row.get("grader"):
        return row["grader"]
    report = Path(row["report"]).with_name("report.json") if row.get("report") else None
    if report is None or not report.is_file():
        return ""
    try:
        return str(json.loads(report.read_text()).get("models", {}).get("grader", ""))
    except (OSError, ValueError):
        return ""


def _done_files(summary: Path, grader: str) -> set[tuple[str, str]]:
    """The files ``summary`` already holds, as (content sha256, file name); raises when its rows were
    graded by another grader (a resumed run must not leave one table with two graders' grades in it)."""
    if not summary.is_file():
        return set()
    with summary.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    named = [_row_grader(row) for row in rows]
    others = sorted({name for name in named if name and name != grader})
    if others:
        raise ValueError(
            f"{summary} holds grades by {', '.join(others)}; this run grades with {grader}. Resume with "
            f"--grader {others[0]} (and its --profile), or write to another --out, so that one table "
            "never mixes two graders"
        )
    unnamed = sum(1 for row, name in zip(rows, named, strict=True) if row.get("status") == "ok" and not name)
    if unnamed:
        log.warning(
            "%s: %d graded rows name no grader (no column, no report.json): not checked", summary, unnamed
        )
    return {(row["sha256"], Path(row["file"]).name) for row in rows if row.get("sha256")}


def _todo(paths: Sequence[Path], done: set[tuple[str, str]]) -> tuple[list[dict[str, str]], int]:
    """The inputs still to analyse (path, content sha256, report folder) and how many were done already.
    Folders are named over every input, done or not, so a resumed run names each report as the first did."""
    todo, skipped = [], 0
    for path, folder in zip(paths, report_folders(paths), strict=True):
        digest = content_sha256(path)
        if digest and (digest, path.name) in done:
            skipped += 1
            continue
        todo.append({"path": str(path), "sha256": digest, "folder": folder})
    return todo, skipped


def analyze_with_ray(
    inputs: Sequence[str],
    out: Path,
    explain: Sequence[str] = (),
    target: Target | None = None,
    score: bool = True,
    address: str | None = None,
    num_cpus: int | None = None,
    profile: str = "quality",
    grader: str | None = None,
) -> list[dict[str, str]]:
    """Analyze ``inputs`` on Ray; returns the rows written by this run (earlier rows stay in the CSV).

    Args:
        address: "auto", "ray://host:10001", or None for an embedded local Ray on this machine's cores.
        num_cpus: CPUs of the embedded local Ray (default: all of this machine's).
        profile: the analysis profile every actor's Workbench runs ("quality" or "fast").
        grader: a shipped grader's card stem instead of the profile's default (resolved here, from this
            machine's weights folder, and loaded by every actor).
    """
    import ray

    summary = out / "summary.csv"
    # one grader for the whole run, named here: every actor loads it (not its own weights folder's default)
    grader = grader or profile_grader(profile)
    done = _done_files(summary, grader)
    out.mkdir(parents=True, exist_ok=True)
    todo, skipped = _todo(expand_inputs(inputs), done)
    log.info("%d images to analyze, %d already in %s", len(todo), skipped, summary)
    written: list[dict[str, str]] = []
    if todo:
        started_here = not ray.is_initialized()
        if started_here:
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
        try:
            written = _run(ray, todo, out, summary, explain, target, score, profile, grader)
        finally:
            if started_here:
                ray.shutdown()
    _write_parquet(summary)
    return written


def _run(ray, todo, out, summary, explain, target, score, profile, grader) -> list[dict[str, str]]:
    resources = ray.cluster_resources()
    actors, cpus, gpus = pool_size(resources.get("CPU", 1.0), resources.get("GPU", 0.0))
    log.info("Ray pool: %d actors x %.2f CPU, %.0f GPU", actors, cpus, gpus)
    dataset = ray.data.from_items(todo).map_batches(
        _AnalyzeActor,
        fn_constructor_kwargs={
            "out": str(out),
            "explain": list(explain),
            "target": target,
            "score": score,
            "threads": max(1, int(round(cpus))),
            "profile": profile,
            "grader": grader,
        },
        batch_size=1,
        concurrency=actors,
        num_cpus=cpus,
        num_gpus=gpus or None,
        max_restarts=3,  # an actor that dies is restarted ...
        max_task_retries=3,  # ... and its batch retried
    )
    new_file = not summary.is_file()
    # a run resumed on a summary.csv from an older version keeps that file's columns (a field added since
    # is left out of it; the reports hold everything), so no row ever shifts under another header
    fields = list(SUMMARY_FIELDS) if new_file else _header(summary)
    left_out = [f for f in SUMMARY_FIELDS if f not in fields]
    if left_out:
        log.warning(
            "%s is from an older version: its columns are kept and %s left out of it (report.json has them)",
            summary,
            ", ".join(left_out),
        )
    written = []
    start = time.perf_counter()
    with (
        summary.open("a", newline="") as handle,
        tqdm(total=len(todo), desc="analyze (ray)", unit="image") as bar,
    ):
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        for row in dataset.iter_rows():
            writer.writerow(row)
            handle.flush()  # a killed run keeps every row it finished
            written.append(dict(row))
            bar.update(1)
            bar.set_postfix(images_per_s=f"{len(written) / (time.perf_counter() - start):.2f}")
    return written


def _header(summary: Path) -> list[str]:
    with summary.open(newline="") as handle:
        return next(csv.reader(handle), []) or list(SUMMARY_FIELDS)


def _write_parquet(summary: Path) -> None:
    if not summary.is_file():
        return
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    columns = pacsv.ConvertOptions(column_types={k: pa.string() for k in _header(summary)})
    pq.write_table(pacsv.read_csv(summary, convert_options=columns), summary.with_suffix(".parquet"))
