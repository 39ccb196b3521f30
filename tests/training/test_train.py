"""Training loop: optimisation lowers the loss; a killed and resumed run ends in the same state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.steps import losses_over_steps
from tests.training.steps import train_config as _config
from training.train import train


def test_a_few_steps_lower_the_loss(synthetic_idrid: Path, tmp_path: Path) -> None:
    from training.tasks import TASKS

    cfg = _config(synthetic_idrid, tmp_path, 1)
    task = TASKS["grader"](cfg)
    card = task.card()
    from models.registry import build_model

    torch.manual_seed(0)
    model = build_model(card)
    train_set, _ = task.datasets(card)
    batch = tuple(
        torch.stack([torch.as_tensor(item[i]) for item in (train_set[j] for j in range(4))]) for i in range(3)
    )
    losses = losses_over_steps(task, model, batch, 15)
    assert losses[-1] < 0.7 * losses[0]


def test_resume_after_kill_gives_same_state(synthetic_idrid: Path, tmp_path: Path) -> None:
    straight = train(_config(synthetic_idrid, tmp_path / "a", 2))
    train(_config(synthetic_idrid, tmp_path / "b", 1))  # "killed" after epoch 1
    resumed = train(_config(synthetic_idrid, tmp_path / "b", 2))  # same command, more epochs: resumes
    assert resumed["epoch"] == straight["epoch"] == 2
    a = load_file(str(tmp_path / "a/runs/run/state.safetensors"))
    b = load_file(str(tmp_path / "b/runs/run/state.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["train_loss"] for h in straight["history"]] == [h["train_loss"] for h in resumed["history"]]


def test_stop_after_keeps_the_longer_schedule(synthetic_idrid: Path, tmp_path: Path) -> None:
    """--stop-after N: the first N epochs of the --epochs schedule, not an N-epoch schedule (how a run
    cut by --max-minutes on one machine is reproduced on another)."""
    from dataclasses import replace

    cut = train(replace(_config(synthetic_idrid, tmp_path / "cut", 10), stop_after=5))
    short = train(_config(synthetic_idrid, tmp_path / "short", 5))
    assert cut["epoch"] == short["epoch"] == 5 and cut["stopped_early_at_epoch"] == 5
    assert cut["history"][0]["train_loss"] == short["history"][0]["train_loss"]  # the same warm-up epoch
    # then a slower cosine decay: other learning rates, other weights
    a = load_file(str(tmp_path / "cut/runs/run/state.safetensors"))
    b = load_file(str(tmp_path / "short/runs/run/state.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_localizer_and_segmenter_tasks_run(synthetic_idrid: Path, tmp_path: Path) -> None:
    loc = train(_config(synthetic_idrid, tmp_path / "loc", 1, "localizer"))
    assert loc["best_metrics"]["od_mean_px"] > 0
    seg = train(_config(synthetic_idrid, tmp_path / "seg", 1, "segmenter"))
    assert 0 <= seg["best_metrics"]["aupr_OD"] <= 1


def test_ship_writes_card_with_storage_check(synthetic_idrid: Path, tmp_path: Path) -> None:
    import json

    cfg = _config(synthetic_idrid, tmp_path, 1)
    cfg.ship, cfg.ship_name, cfg.ship_dir = True, "tiny_shipped", str(tmp_path / "weights")
    result = train(cfg, command="drwb train grader --test")
    assert result["shipped"] == "tiny_shipped.safetensors"
    card = json.loads((tmp_path / "weights" / "tiny_shipped.json").read_text())
    assert card["training"]["storage"] in ("fp16", "fp32")
    check = card["training"]["fp16_check"]
    assert set(check) == {"fp32_score", "fp16_score", "fp32_over_file_limit_mb"}
    assert check["fp32_over_file_limit_mb"] is None  # a tiny model: fp16 only if it changes nothing
    assert (card["training"]["storage"] == "fp16") == (check["fp16_score"] >= check["fp32_score"] - 1e-9)
    assert card["training"]["command"] == "drwb train grader --test" and len(card["sha256"]) == 64


def test_weights_over_the_file_limit_ship_in_fp16() -> None:
    from torch import nn

    from training.export import FILE_LIMIT_MB, over_file_limit

    assert not over_file_limit(nn.Linear(10, 10))
    big = nn.Linear(1000, int(FILE_LIMIT_MB * 1e6 / 4 / 1000) + 10)  # just over the limit in fp32
    assert over_file_limit(big)


def test_heatmap_target_has_one_positive_pixel_per_landmark() -> None:
    import numpy as np

    from training.data import gaussian_heatmaps

    maps = gaussian_heatmaps(np.array([[10.4, 20.6], [63.5, 0.2]]), 64, 4.0)
    assert ((maps >= 0.99).sum(axis=(1, 2)) == 1).all()
    assert maps[0, 21, 10] == 1.0


def test_stop_after_trains_nothing_past_it(synthetic_idrid: Path, tmp_path: Path) -> None:
    """The ship step of a time-cut run uses --stop-after 1: scoring must not resume the training."""
    from dataclasses import replace

    done = train(replace(_config(synthetic_idrid, tmp_path, 4), stop_after=2))
    again = train(replace(_config(synthetic_idrid, tmp_path, 4), stop_after=1))
    assert again["epoch"] == done["epoch"] == 2 and len(again["history"]) == 2


def test_fitted_epochs_follow_the_pace_given() -> None:
    from dataclasses import replace

    from training.train import TrainConfig, fitted_epochs

    cfg = replace(TrainConfig(task="grader"), epochs=40, fit_minutes=6.0)
    # a slow first epoch (0.5 min), then 0.25 min an epoch: 1 + 22 epochs fit in 6 minutes
    assert fitted_epochs(cfg, elapsed=0.5, per_epoch=0.25, done=1) == 23
    assert fitted_epochs(cfg, elapsed=0.5, per_epoch=0.01, done=1) == 40  # never longer than --epochs
    assert fitted_epochs(cfg, elapsed=9.0, per_epoch=0.5, done=1) == 2  # at least one more (the decay)
    assert fitted_epochs(replace(cfg, epochs=1), elapsed=9.0, per_epoch=0.5, done=1) == 1  # within --epochs


def test_fit_minutes_runs_a_whole_shorter_schedule(
    synthetic_idrid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--fit-minutes: after the second epoch the cosine is recomputed over the epochs that fit, so the run
    ends as a plain run of that length does (a --max-minutes or --stop-after cut of the long schedule ends
    at a higher learning rate), it is not marked as cut, and a repeat of the same command trains nothing
    more."""
    from dataclasses import replace

    import training.train as loop

    monkeypatch.setattr(loop, "fitted_epochs", lambda cfg, elapsed, per_epoch, done: 4)
    base = replace(_config(synthetic_idrid, tmp_path / "fit", 12), lr=1e-3)
    fitted = train(replace(base, fit_minutes=1.0))
    cut = train(replace(base, runs=str(tmp_path / "cut"), stop_after=4))
    assert fitted["epoch"] == cut["epoch"] == 4 and "stopped_early_at_epoch" not in fitted
    assert fitted["history"][0]["lr"] == cut["history"][0]["lr"]  # the same warm-up
    plain = train(replace(base, runs=str(tmp_path / "plain"), epochs=4))
    lrs = {
        name: [h["lr"] for h in run["history"]]
        for name, run in (("fit", fitted), ("cut", cut), ("plain", plain))
    }
    assert lrs["fit"][2:] == lrs["plain"][2:]  # from the third epoch on, a plain run of the fitted length
    assert lrs["fit"][-1] < lrs["cut"][-1]  # decayed further than the cut run of the long schedule
    assert fitted["schedule_epochs"] == 4 and "--epochs 4 without" in fitted["card"]["training"]["schedule"]
    again = train(replace(base, fit_minutes=1.0))
    assert again["epoch"] == 4 and len(again["history"]) == 4


def test_inference_tiling_is_checked_before_training_and_written_to_the_card() -> None:
    """``--inference-tiling 544:32`` becomes the card's ``extra.inference_tile`` / ``inference_overlap``
    (what ``SegmenterPredictor`` tiles with); a malformed value fails before any training."""
    from training.export import final_card, parse_inference_tiling
    from training.tasks import TASKS
    from training.train import TrainConfig, train

    cfg = TrainConfig(task="segmenter", inference_tiling="544:32")
    card = final_card(TASKS["segmenter"](cfg).card(), cfg, {"epoch": 1, "history": []}, "cmd", {})
    assert (card.extra["inference_tile"], card.extra["inference_overlap"]) == (544, 32)
    assert card.extra["tile"] != 544  # the training tile stays recorded as it was

    assert parse_inference_tiling("544:32") == {"inference_tile": 544, "inference_overlap": 32}
    for bad in ("544", "500:32", "544:544", "a:b"):
        with pytest.raises(ValueError, match="inference-tiling"):
            parse_inference_tiling(bad)
    with pytest.raises(ValueError, match="inference-tiling"):
        train(TrainConfig(task="segmenter", inference_tiling="544x32", data="/nonexistent"))


def test_precision_chooses_bf16_training_steps_by_name_and_device() -> None:
    from training.devices import trains_in_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert trains_in_bf16("auto", cuda) and not trains_in_bf16("auto", cpu)  # the CPU stays fp32 by default
    assert trains_in_bf16("bf16", cpu) and not trains_in_bf16("fp32", cuda)
    with pytest.raises(ValueError, match="'auto', 'fp32' or 'bf16'"):
        trains_in_bf16("fp16", cpu)


def test_a_bf16_run_on_the_cpu_trains_other_weights_and_says_so(
    synthetic_idrid: Path, tmp_path: Path
) -> None:
    """--precision bf16 on the CPU really changes the arithmetic (other weights after one epoch than fp32,
    the same loss within bf16's rounding) and the run's config records it."""
    from dataclasses import replace

    fp32 = train(_config(synthetic_idrid, tmp_path / "fp32", 1, "segmenter"))
    bf16 = train(replace(_config(synthetic_idrid, tmp_path / "bf16", 1, "segmenter"), precision="bf16"))
    a = load_file(str(tmp_path / "fp32/runs/run/state.safetensors"))
    b = load_file(str(tmp_path / "bf16/runs/run/state.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert bf16["history"][0]["train_loss"] == pytest.approx(fp32["history"][0]["train_loss"], rel=0.05)
    assert bf16["config"]["precision"] == "bf16"
