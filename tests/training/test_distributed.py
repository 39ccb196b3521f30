"""``drwb train`` under torchrun: 2 CPU processes (gloo) train, rank 0 alone writes, and resume works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from training.distributed import Dist, shard

ROOT = Path(__file__).resolve().parents[2]


def test_shard_splits_whole_global_batches_between_ranks() -> None:
    order = np.arange(22)
    parts = [shard(order, 4, Dist(rank, 2)) for rank in range(2)]
    assert [len(p) for p in parts] == [8, 8]  # 16 usable (two global batches of 8); 6 dropped
    assert sorted(np.concatenate(parts).tolist()) == list(range(16))
    assert shard(order, 4, Dist()).tolist() == order.tolist()
    small = [shard(np.arange(7), 4, Dist(rank, 2)) for rank in range(2)]
    assert [len(p) for p in small] == [3, 3]  # under one global batch: still equal shares


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(synthetic_idrid: Path, tmp_path: Path, epochs: int, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-port", str(_free_port()),
        "drwb.py", "train", "grader", "--backbone", "test_convnext", "--model-name", "test_tiny_cls",
        "--data", str(synthetic_idrid), "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs"),
        "--run-name", "ddp", "--epochs", str(epochs), "--batch-size", "4", "--input-size", "64",
        "--no-pretrained", "--threads", "1", *extra,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def test_torchrun_two_processes_train_checkpoint_once_and_resume(
    synthetic_idrid: Path, tmp_path: Path
) -> None:
    first = _torchrun(synthetic_idrid, tmp_path, 1)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    assert sorted(p.name for p in run.iterdir()) == [
        "best.json",
        "best.safetensors",
        "state.json",
        "state.safetensors",
    ]
    assert first.stderr.count("ddp epoch 1/1 loss") == 1  # one writer, one log line
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 1 and state["step"] >= 1
    # resumed with a time-fitted schedule: after two epochs in this run both ranks take the shortest fitted
    # length (an all-reduce under gloo) and go on together
    second = _torchrun(synthetic_idrid, tmp_path, 4, "--fit-minutes", "100")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ddp epoch 1/4 loss" not in second.stderr and second.stderr.count("ddp epoch 4/4 loss") == 1
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 4 and len(state["history"]) == 4
    assert state["schedule_epochs"] == 4 and state["schedule_fitted_after"] == 3
