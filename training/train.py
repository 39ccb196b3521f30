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
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from models.card import ModelCard
from models.registry import SHIPPED_WEIGHTS_DIR, build_model, save_model
from training.distributed import setup, shard
from training.tasks import TASKS

__all__ = ["FILE_LIMIT_MB", "TrainConfig", "exact_device", "over_file_limit", "train"]

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
    ordinal_weight: float = 0.0  # grader: weight of the expected-grade regression term (ordinal-aware)
    sampling: str = "mild3"  # grader: "mild3" (grade 1 shown 3x) or "sqrt" (class-balanced by 1/sqrt(n))
    seed: int = 0
    workers: int = 2
    threads: int = 0
    limit: int = 0
    no_pretrained: bool = False
    max_minutes: float = 0.0
    stop_after: int = 0  # no epoch beyond this one of the --epochs schedule (a --max-minutes cut, exactly)
    init_from: str = ""  # start from a shipped model's weights (card stem in models/weights), not ImageNet
    device: str = "auto"  # "auto": CUDA when there is one (bf16 autocast, channels_last), else "cpu"
    loader_workers: int = 0  # DataLoader worker processes for training batches (0: in the main process)
    val_every: int = 1  # validate every N epochs and after the last (0: only after the last)
    guides: str = ""  # grader: lesion-guide file (`drwb prepare-guides`) for attention supervision
    attention_weight: float = 0.0  # grader: weight of the attention-on-lesions loss (0: off)
    teacher: str = ""  # grader: teacher-logit file (`drwb prepare-teacher`) for distillation
    distill_weight: float = 0.0  # grader: weight of the soft-target loss (0: off)
    distill_temperature: float = 2.0  # grader: softmax temperature of the soft targets
    teacher_model: str = ""  # grader: run folder of an online teacher ("{fold}" for fold k's), for hints
    hint_weight: float = 1.0  # grader, with teacher_model: weight of the feature-hint loss
    unlabelled: bool = False  # grader: add segmentation-only photographs as unlabelled inputs
    lesion_rates: str = ""  # segmenter: tile-centring rate per lesion, e.g. "MA:0.3,HE:0.15,EX:0.15,SE:0.2"
    focal_gamma: float = 0.0  # segmenter: focal-loss gamma on the BCE term (0: plain BCE)
    channels_from: str = ""  # segmenter: "MODEL@SIZE:HE,OD;..." channels the shipped card takes elsewhere
    ship: bool = False
    ship_name: str = ""
    ship_dir: str = ""  # default: models/weights (SHIPPED_WEIGHTS_DIR)

    @property
    def name(self) -> str:
        return self.run_name or f"{self.task}_{self.backbone}"


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    extra: nn.Module | None = None,
) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if extra is not None:  # the task's training-only modules (``TrainTask.attach``)
        tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in extra.state_dict().items()})
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"opt.{index}.{key}"] = tensor.detach().cpu().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path.with_suffix(".safetensors"))
    meta_tmp = path.with_suffix(".json.tmp")
    meta_tmp.write_text(json.dumps(meta, indent=1))
    os.replace(meta_tmp, path.with_suffix(".json"))


def _load_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, extra: nn.Module | None = None
) -> dict[str, Any]:
    tensors = load_file(str(path.with_suffix(".safetensors")))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if extra is not None:
        extra.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")})
    opt_state = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    opt_state["state"] = state
    optimizer.load_state_dict(opt_state)
    return json.loads(path.with_suffix(".json").read_text())


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _initial_state(source: str, fold: int) -> dict[str, torch.Tensor]:
    """fp32 weights to start from: a shipped model's card stem (hash-checked by ``load_model``), or a
    ``.safetensors`` file whose path may hold ``{fold}`` (each fold of a --folds run from its own)."""
    if source.endswith(".safetensors"):
        state = load_file(source.format(fold=fold))
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    from models.registry import load_model

    shipped, _ = load_model(source)
    return {k: v.detach().clone() for k, v in shipped.state_dict().items()}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device(name)


def exact_device(name: str) -> torch.device:
    """The device for figures that must match a CPU run: fp32 without TF32 shortcuts on CUDA."""
    device = _device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


def _to_device(batch: tuple, device: torch.device) -> tuple:
    """Tensors of a batch onto ``device``; 4-D images in channels_last on CUDA (faster convolutions)."""
    if device.type == "cpu":
        return batch
    out = []
    for item in batch:
        if torch.is_tensor(item):
            item = item.to(device, non_blocking=True)
            if item.ndim == 4 and item.shape[1] == 3:
                item = item.contiguous(memory_format=torch.channels_last)
        out.append(item)
    return tuple(out)


def _collate(items: list[tuple]) -> tuple:
    return tuple(
        torch.stack(list(col)) if torch.is_tensor(col[0]) else torch.tensor(col)
        for col in zip(*items, strict=True)
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
    model = build_model(card)
    if cfg.init_from:
        model.load_state_dict(_initial_state(cfg.init_from, cfg.fold))
    task.prepare_model(model)
    device = _device(cfg.device)
    # channels_last everywhere: on CUDA and on this project's CPUs (oneDNN) alike, a training step of
    # lite0 at 448 px measured 197 -> 149 ms per image on 2 cores
    model = model.to(device, memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    if ranks.is_main:  # builds the training cache once; the other ranks read it when it is complete
        train_set, val_set = task.datasets(card)
    ranks.barrier()
    if not ranks.is_main:
        train_set, val_set = task.datasets(card)
    extra = task.attach(model, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if extra is not None:
        trainable += list(extra.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run_dir = Path(cfg.runs) / cfg.name
    if ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    ranks.barrier()
    state_path = run_dir / "state"
    stepper = ranks.wrap(model)  # DDP when distributed; ``model`` itself is saved and validated
    steps_per_epoch = math.ceil(len(task.epoch_indices(train_set, np.random.default_rng(0))) / cfg.batch_size)
    total_steps, warmup = steps_per_epoch * cfg.epochs, int(steps_per_epoch * cfg.warmup_epochs)
    meta: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "best_score": -math.inf,
        "history": [],
        "config": asdict(cfg),
    }
    if state_path.with_suffix(".json").is_file():
        meta = _load_state(state_path, model, optimizer, extra)
        log.info("resuming %s after epoch %d", cfg.name, meta["epoch"])
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, collate_fn=_collate)
    started = time.monotonic()
    # --stop-after N: no epoch beyond N of the --epochs schedule (a finished run trains nothing more)
    last_epoch = min(cfg.epochs, cfg.stop_after) if cfg.stop_after else cfg.epochs
    for epoch in range(meta["epoch"], last_epoch):
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
            desc=f"{cfg.name} epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            file=sys.stderr,
            disable=not ranks.is_main,
        )
        for batch in bar:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(meta["step"], total_steps, warmup, cfg.lr)
            with autocast:
                loss = task.loss(stepper, _to_device(batch, device))
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
                metrics = task.validate(model, [_to_device(b, device) for b in val_loader])
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
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
            _save_state(state_path, model, optimizer, meta, extra)
            shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
            print(
                f"{cfg.name} epoch {epoch + 1}/{cfg.epochs} loss {record['train_loss']:.4f} {shown}"
                f"{' *best*' if improved else ''}",
                file=sys.stderr,
                flush=True,
            )
        ranks.barrier()
        over_budget = bool(cfg.max_minutes) and (time.monotonic() - started) / 60 > cfg.max_minutes
        if ranks.any(over_budget) and epoch + 1 < cfg.epochs:
            log.warning("time budget of %.0f min reached after epoch %d", cfg.max_minutes, epoch + 1)
            meta["stopped_early_at_epoch"] = epoch + 1
            break
        if epoch + 1 == last_epoch < cfg.epochs:
            meta["stopped_early_at_epoch"] = epoch + 1  # --stop-after: the schedule stays --epochs long
    card = _final_card(card, cfg, meta, command, task.recipe())
    if ranks.is_main:
        (run_dir / "best.json").write_text(card.to_json())
        if cfg.ship:
            meta["shipped"] = _ship(card, cfg, task, run_dir, val_loader)
    ranks.barrier()
    meta["card"] = json.loads(card.to_json())
    return meta


FILE_LIMIT_MB = 10.0  # a Hugging Face Space's git rejects larger binaries unless LFS tracks them


def over_file_limit(model: nn.Module) -> bool:
    """Whether the model's fp32 weights file would exceed ``FILE_LIMIT_MB``: then it ships in fp16 even
    if that changes something, and the card's ``fp16_check`` records what changed."""
    size = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    return size / 1e6 > FILE_LIMIT_MB


def _ship(card: ModelCard, cfg: TrainConfig, task, run_dir: Path, val_loader: DataLoader) -> str:
    """Export the best checkpoint: fp16 when its validation score equals fp32's, else fp32."""
    best = build_model(card.with_updates(extra={**card.extra, "imagenet_init": False}))
    best.load_state_dict(load_file(str(run_dir / "best.safetensors")))
    best.eval()
    half = build_model(card.with_updates(extra={**card.extra, "imagenet_init": False}))
    half.load_state_dict(
        {k: v.half().float() if v.is_floating_point() else v for k, v in best.state_dict().items()}
    )
    half.eval()
    device = exact_device(cfg.device)
    with torch.no_grad():
        batches = [_to_device(b, device) for b in val_loader]
        score32 = task.validate(best.to(device), batches)["score"]
        score16 = task.validate(half.to(device), batches)["score"]
    best.cpu()
    use_half = score16 >= score32 - 1e-9 or over_file_limit(best)
    log.info(
        "fp32 score %.5f, fp16 score %.5f: shipping %s", score32, score16, "fp16" if use_half else "fp32"
    )
    training = {
        **card.training,
        "storage": "fp16" if use_half else "fp32",
        "fp16_check": {
            "fp32_score": score32,
            "fp16_score": score16,
            "fp32_over_file_limit_mb": FILE_LIMIT_MB if over_file_limit(best) else None,
        },
    }
    name = f"{cfg.ship_name or cfg.name}.safetensors"
    return save_model(
        best,
        card.with_updates(weights=name, training=training),
        Path(cfg.ship_dir or SHIPPED_WEIGHTS_DIR),
        half=use_half,
    ).weights


def parse_channels_from(text: str) -> list[dict[str, Any]]:
    """``"segmenter_lite0@640:HE,OD"`` (``;`` between models) -> the card's ``extra.channels_from``
    (``workbench.predictors.load_segmenter`` reads it: those channels come from that model at that size)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        source, _, channels = part.partition(":")
        model, _, size = source.partition("@")
        codes = [c.strip() for c in channels.split(",") if c.strip()]
        if not model or not codes or (size and not size.isdigit()):
            raise ValueError(
                f"--channels-from {part!r}: expected MODEL[@SIZE]:CODE,CODE (e.g. segmenter_lite0@640:HE,OD)"
            )
        out.append({"model": model, "input_size": int(size) if size else None, "channels": codes})
    return out


def _final_card(
    card: ModelCard, cfg: TrainConfig, meta: dict[str, Any], command: str, recipe: dict[str, Any]
) -> ModelCard:
    extra = {k: v for k, v in card.extra.items() if k != "imagenet_init"}
    if cfg.channels_from:
        extra["channels_from"] = parse_channels_from(cfg.channels_from)
    return card.with_updates(
        extra={
            **extra,
            "imagenet_init": False,
            "initialised_from": f"{cfg.init_from.format(fold=cfg.fold)}"
            if cfg.init_from
            else "ImageNet (efficientnet-lite0 PyPI package)"
            if card.extra.get("imagenet_init")
            else "random (from scratch)",
        },
        training={
            "data": f"IDRiD training images ({cfg.data}), deterministic split "
            f"val_fraction={cfg.val_fraction} "
            f"seed={cfg.seed} (workbench.io.splits)",
            "command": command or "drwb train " + cfg.task,
            "commit": _git_commit(),
            "epochs_run": meta["epoch"],
            "best_epoch": meta.get("best_epoch"),
            "validation": meta.get("best_metrics", {}),
            **({"recipe": recipe} if recipe else {}),
            "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        },
    )
