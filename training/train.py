"""The training loop shared by every task: seeds, progress, validation, best checkpoint, resume.

Run state lives in ``<runs>/<run name>/``:

    state.safetensors   model and AdamW tensors after the last finished epoch (written atomically)
    state.json          epoch, step, best score, history, config
    best.safetensors    model weights of the best validation epoch, and best.json (its card + metrics)

Killing a run and starting it again with the same command resumes after the last finished epoch and
ends in the same state as an uninterrupted run: every epoch re-seeds torch and the data order from
(seed, epoch), and the learning rate is a pure function of the step. ``--ship`` exports the best
checkpoint to ``models/weights/`` as fp16 safetensors with its card.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from models.registry import build_model
from training.checkpoint import initial_state, load_initial, load_state, save_state
from training.devices import pick_device, to_device, trains_in_bf16
from training.distributed import setup, shard
from training.export import final_card, parse_inference_tiling, ship_best
from training.tasks import TASKS
from workbench.io.splits import split_seed

__all__ = ["TrainConfig", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of one run; filled from CLI flags and/or a YAML file (flags win)."""

    task: str = "grader"
    backbone: str = "tf_efficientnet_lite0"
    data: str = "../shared/data/idrid-lite"
    cache: str = "cache"
    runs: str = "runs"
    run_name: str = ""
    model_name: str = ""
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    input_size: int = 0
    tile: int = 384
    tiles_per_image: int = 4
    val_fraction: float = 0.2
    folds: int = 0  # > 1: k-fold cross-validation (training.cv), one run per fold plus a refit on all
    fold: int = -1  # set by training.cv: the held-out fold of this run (-1: the val_fraction split)
    refit: bool = False  # set by training.cv: train on every image, no validation
    ship_fold: int = -1  # with --folds: ship this fold's model instead of training a refit on all images
    select: str = "best"  # "best" validation epoch, or "last" (fixed schedule: never peeks at held-out data)
    freeze_blocks: int = 0  # grader: keep the stem and the first N block stages at their ImageNet values
    freeze_backbone: bool = False  # grader: train only the pools and heads (with --init-from: a new head)
    fine_attention: int = 0  # grader: > 0 attends at this stride too (models.classifier.FineAttention)
    ordinal_weight: float = 0.0  # grader: weight of the expected-grade regression term (ordinal-aware)
    sampling: str = "mild3"  # grader: "mild3" (grade 1 shown 3x) or "sqrt" (class-balanced by 1/sqrt(n))
    seed: int = 0
    fold_seed: int = -1  # seed of the folds / validation split; -1: --seed (another --seed, the same folds)
    workers: int = 2
    threads: int = 0
    limit: int = 0
    no_pretrained: bool = False
    max_minutes: float = 0.0
    # > 0: after the second epoch, shorten the cosine schedule to the epochs that fit this many minutes (a
    # whole schedule, unlike --max-minutes, which cuts one at whatever learning rate it has reached)
    fit_minutes: float = 0.0
    stop_after: int = 0  # no epoch beyond this one of the --epochs schedule (a --max-minutes cut, exactly)
    init_from: str = ""  # start from a shipped model's weights (card stem in models/weights), not ImageNet
    device: str = "auto"  # "auto": CUDA when there is one (bf16 autocast, channels_last), else "cpu"
    precision: str = "auto"  # training steps: "auto" bf16 autocast on CUDA, fp32 on the CPU; "bf16", "fp32"
    loader_workers: int = 0  # DataLoader worker processes for training batches (0: in the main process)
    val_every: int = 1  # validate every N epochs and after the last (0: only after the last)
    guides: str = ""  # grader: lesion-guide file (`drwb prepare-guides`) for attention supervision
    attention_weight: float = 0.0  # grader: weight of the attention-on-lesions loss (0: off)
    teacher: str = ""  # grader: teacher-logit file (`drwb prepare-teacher`) for distillation
    distill_weight: float = 0.0  # grader: weight of the soft-target loss (0: off)
    distill_temperature: float = 2.0  # grader: softmax temperature of the soft targets
    teacher_model: str = ""  # grader: run folder of an online teacher ("{fold}" for fold k's), for hints
    hint_weight: float = 1.0  # grader, with teacher_model: weight of the feature-hint loss
    reuse_teacher_head: bool = (
        False  # grader, with teacher_model: a neck to the teacher's features + its heads
    )
    feature_weight: float = 1.0  # grader, with reuse_teacher_head: weight of the final-feature MSE
    layer_scale_init: float = 0.0  # grader, ConvNeXt from scratch: start layer scale here (0: timm's 1e-6)
    no_norm_decay: bool = False  # no weight decay on biases, norms and layer scales (1-D parameters)
    unlabelled: bool = False  # grader: add segmentation-only photographs as unlabelled inputs
    lesion_rates: str = ""  # segmenter: tile-centring rate per lesion, e.g. "MA:0.3,HE:0.15,EX:0.15,SE:0.2"
    focal_gamma: float = 0.0  # segmenter: focal-loss gamma on the BCE term (0: plain BCE)
    channels_from: str = ""  # segmenter: "MODEL@SIZE:HE,OD;..." channels the shipped card takes elsewhere
    mirror_tiles: bool = False  # segmenter: the shipped card averages each tile with its mirror image
    inference_tiling: str = ""  # segmenter: "TILE:OVERLAP" the shipped card segments its crop with (544:32)
    ship: bool = False
    ship_name: str = ""
    ship_dir: str = ""  # default: models/weights (SHIPPED_WEIGHTS_DIR)

    @property
    def name(self) -> str:
        return self.run_name or f"{self.task}_{self.backbone}"

    @property
    def split_seed(self) -> int:
        """The seed of the folds and the validation split: ``--fold-seed``, else ``--seed``."""
        return split_seed({"seed": self.seed, "fold_seed": self.fold_seed})


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def fitted_epochs(cfg: TrainConfig, elapsed: float, per_epoch: float, done: int) -> int:
    """The schedule's length under ``--fit-minutes``: ``done`` epochs took ``elapsed`` minutes in this run
    (a resumed run's budget starts again), and each epoch still to run takes ``per_epoch`` (the last one's
    time). At least one more epoch, at most ``--epochs``."""
    more = int((cfg.fit_minutes - elapsed) / max(per_epoch, 1e-9))
    return min(cfg.epochs, max(done + 1, done + more))


def _collate(items: list[tuple]) -> tuple:
    return tuple(
        torch.stack(list(col)) if torch.is_tensor(col[0]) else torch.tensor(col)
        for col in zip(*items, strict=True)
    )


def _param_groups(params: list[nn.Parameter], cfg: TrainConfig) -> list[dict[str, Any]]:
    """One AdamW group, or with ``no_norm_decay`` two: 1-D parameters (biases, norm weights, layer
    scales) without weight decay, as timm trains ConvNeXt from scratch."""
    if not cfg.no_norm_decay:
        return [{"params": params, "weight_decay": cfg.weight_decay}]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


# settings that decide which tensors the saved optimiser state belongs to: a resume must not change them
_STATE_SHAPING = (
    "task",
    "backbone",
    "teacher_model",
    "reuse_teacher_head",
    "no_norm_decay",
    "freeze_blocks",
    "freeze_backbone",
    "fine_attention",
)


def _check_resumable(path: Path, cfg: TrainConfig) -> None:
    saved = json.loads(path.read_text()).get("config", {})
    saved_split = split_seed(saved) if "seed" in saved else cfg.split_seed
    if saved_split != cfg.split_seed:  # another held-out fold would score images the model trained on
        raise ValueError(
            f"{path.parent} was started with folds / validation split of seed {saved_split}, not "
            f"{cfg.split_seed} (--fold-seed, else --seed): resuming would hold out images it trained on; "
            "use another --run-name"
        )
    changed = [k for k in _STATE_SHAPING if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        raise ValueError(
            f"{path.parent} was started with other {', '.join(changed)}: resuming would pair the saved "
            "optimiser state with the wrong parameters; use another --run-name"
        )


def train(cfg: TrainConfig, command: str = "") -> dict[str, Any]:
    """Run (or resume) training; returns the final state dict (history, best metrics, card).

    Under ``torchrun`` the same call runs DistributedDataParallel (``training.distributed``).
    """
    if cfg.task not in TASKS:
        raise KeyError(f"unknown task {cfg.task!r}; valid tasks: {', '.join(TASKS)}")
    ranks = setup()
    if cfg.batch_size % ranks.world:
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the {ranks.world} processes")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = TASKS[cfg.task](cfg)
    card = task.card()
    torch.manual_seed(cfg.seed)
    if cfg.select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', got {cfg.select!r}")
    if cfg.inference_tiling:
        parse_inference_tiling(cfg.inference_tiling)  # a typo fails now, not after the training
    model = build_model(card)
    if cfg.init_from:
        load_initial(model, initial_state(cfg.init_from, cfg.fold))
    task.prepare_model(model)
    device = pick_device(cfg.device)
    # channels_last everywhere: on CUDA and on this project's CPUs (oneDNN) alike, a training step of
    # lite0 at 448 px measured 197 -> 149 ms per image on 2 cores
    model = model.to(device, memory_format=torch.channels_last)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=trains_in_bf16(cfg.precision, device)
    )
    if ranks.is_main:  # builds the training cache once; the other ranks read it when it is complete
        train_set, val_set = task.datasets(card)
    ranks.barrier()
    if not ranks.is_main:
        train_set, val_set = task.datasets(card)
    extra = task.attach(model, device)
    if extra is not None and ranks.world > 1:
        raise ValueError("online distillation (--teacher-model) runs in one process, not under torchrun")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if extra is not None:
        trainable += list(extra.parameters())
    optimizer = torch.optim.AdamW(_param_groups(trainable, cfg), lr=cfg.lr)
    run_dir = Path(cfg.runs) / cfg.name
    if ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ranks.barrier()
    state_path = run_dir / "state"
    stepper = ranks.wrap(model)  # DDP when distributed; ``model`` itself is saved and validated
    steps_per_epoch = math.ceil(len(task.epoch_indices(train_set, np.random.default_rng(0))) / cfg.batch_size)
    warmup = int(steps_per_epoch * cfg.warmup_epochs)
    meta: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "best_score": -math.inf,
        "history": [],
        "config": asdict(cfg),
    }
    if state_path.with_suffix(".json").is_file():
        _check_resumable(state_path.with_suffix(".json"), cfg)
        meta = load_state(state_path, model, optimizer, extra)
        log.info("resuming %s after epoch %d", cfg.name, meta["epoch"])
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, collate_fn=_collate)
    started = time.monotonic()
    # --stop-after N: no epoch beyond N of the --epochs schedule (a finished run trains nothing more)
    schedule = meta.get("schedule_epochs", cfg.epochs)  # a resumed fitted run keeps its fitted length
    total_steps = steps_per_epoch * schedule
    last_epoch = min(schedule, cfg.stop_after) if cfg.stop_after else schedule
    epoch = first_epoch = meta["epoch"]
    while epoch < last_epoch:
        torch.manual_seed(cfg.seed * 10_000 + epoch)
        train_set.set_epoch(epoch)
        order = task.epoch_indices(train_set, np.random.default_rng([cfg.seed, epoch]))
        order = shard(order, cfg.batch_size, ranks)
        per_rank = cfg.batch_size // ranks.world
        loader = DataLoader(
            Subset(train_set, order.tolist()),
            batch_size=per_rank,
            shuffle=False,
            collate_fn=_collate,
            drop_last=len(order) > per_rank,
            num_workers=cfg.loader_workers,
            pin_memory=device.type == "cuda",
        )
        task.train_mode(model)
        losses = []
        bar = tqdm(
            loader,
            desc=f"{cfg.name} epoch {epoch + 1}/{schedule}",
            leave=False,
            file=sys.stderr,
            disable=not ranks.is_main,
        )
        epoch_started = time.monotonic()
        for batch in bar:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(meta["step"], total_steps, warmup, cfg.lr)
            with autocast:
                loss = task.loss(stepper, to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(trainable, 5.0)
            optimizer.step()
            meta["step"] += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        model.eval()
        metrics: dict[str, Any] = {"score": float("nan")}
        last = epoch + 1 == last_epoch
        due = last or (cfg.val_every > 0 and (epoch + 1) % cfg.val_every == 0)
        if len(val_set) and due:
            with torch.no_grad(), autocast:
                metrics = task.validate(model, [to_device(b, device) for b in val_loader])
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "lr": optimizer.param_groups[0]["lr"],  # the epoch's last learning rate
            **metrics,
            "minutes": (time.monotonic() - started) / 60,
        }
        meta["history"].append(record)
        meta["epoch"] = epoch + 1
        improved = cfg.select == "last" or (due and metrics["score"] > meta["best_score"])
        if improved:
            meta["best_score"] = metrics["score"]
            meta["best_epoch"] = epoch + 1
            meta["best_metrics"] = metrics
        if ranks.is_main:  # one writer; the other ranks hold the same tensors (DDP keeps them in sync)
            if improved:
                weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                save_file(weights, str(run_dir / "best.safetensors"))
            save_state(state_path, model, optimizer, meta, extra)
            shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
            print(
                f"{cfg.name} epoch {epoch + 1}/{schedule} loss {record['train_loss']:.4f} {shown}"
                f"{' *best*' if improved else ''}",
                file=sys.stderr,
                flush=True,
            )
        ranks.barrier()
        epoch += 1
        # fitted after this invocation's second epoch: the first one's start-up (kernel tuning, caches)
        # does not recur, each epoch's start of its loader processes does; the budget counts from here
        fit_due = cfg.fit_minutes and "schedule_epochs" not in meta and epoch - first_epoch >= 2
        if fit_due and epoch < cfg.epochs:
            now = time.monotonic()
            fitted = fitted_epochs(cfg, (now - started) / 60, (now - epoch_started) / 60, epoch)
            schedule = ranks.least(fitted)  # every rank runs the same schedule
            meta.update(
                schedule_epochs=schedule,
                schedule_fit_minutes=cfg.fit_minutes,
                schedule_from_epochs=cfg.epochs,
                schedule_fitted_after=epoch,
                # a plain --epochs run has the same learning rates when the warm-up covered every epoch so far
                schedule_exact=cfg.warmup_epochs >= epoch,
            )
            total_steps = steps_per_epoch * schedule
            last_epoch = min(last_epoch, schedule)
            if schedule < cfg.epochs:
                log.warning(
                    "schedule fitted to %d of %d epochs (--fit-minutes %g)",
                    schedule,
                    cfg.epochs,
                    cfg.fit_minutes,
                )
            if ranks.is_main:
                save_state(state_path, model, optimizer, meta, extra)
        # --max-minutes: no epoch that would end past the budget at the last one's pace
        now = time.monotonic()
        over_budget = bool(cfg.max_minutes) and (2 * now - started - epoch_started) / 60 > cfg.max_minutes
        if ranks.any(over_budget) and epoch < schedule:
            log.warning(
                "time budget of %g min: no epoch after %d (the next would end past it)",
                cfg.max_minutes,
                epoch,
            )
            meta["stopped_early_at_epoch"] = epoch
            break
        if epoch == last_epoch < schedule:
            meta["stopped_early_at_epoch"] = epoch  # --stop-after: the schedule stays as long as it was
    task.detach()
    card = final_card(card, cfg, meta, command, task.recipe())
    if ranks.is_main:
        (run_dir / "best.json").write_text(card.to_json())
        if cfg.ship:
            meta["shipped"] = ship_best(card, cfg, task, run_dir, val_loader)
    ranks.barrier()
    meta["card"] = json.loads(card.to_json())
    return meta
