"""k-fold cross-validation of the grader: the unit of truth for every grading figure we quote.

``drwb train grader --folds 5 ...`` runs, each resumable:

1. one run per fold (``<runs>/<name>/fold<k>``) on the other folds' images, with a fixed schedule
   (``select="last"``): no epoch is chosen by looking at the fold it is scored on;
2. out-of-fold (OOF) prediction: each fold model predicts its held-out images, plain and with a
   horizontal flip; logits go to ``<runs>/<name>/oof.npz``;
3. temperature scaling of the DR and DME heads fitted on the OOF logits, OOF metrics with bootstrap
   95% intervals and calibration error before/after, in ``<runs>/<name>/oof.json``;
4. a refit on all images with the same recipe (``<runs>/<name>/refit``): the model that ships. Its
   expected performance on new images is the OOF estimate of the recipe (each fold model saw 80% of the
   images, the refit 100%, so the estimate is if anything conservative);
5. with ``--ship``: the refit exported with the OOF temperatures in its card (applied at inference) and
   the OOF figures under ``training.evaluation.oof``. ``--ship-fold K`` ships fold K's model instead and
   skips the refit (a quarter less training; the model saw 80% of the images, and its own held-out
   fold's figures are recorded beside the OOF ones).

Why a refit and not the five fold models as an ensemble: five lite0 networks cost five forward passes per
image, which breaks the grading-speed target (>= 10 images/s on 2 cores); the fold models stay in the
run folder for the OOF figures.

Folds are stratified by DR grade and keep byte-identical duplicates together (``workbench.io.splits``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from models.classifier import NUM_DR
from models.registry import build_model
from training.data import GradingData
from training.devices import exact_device
from training.export import FILE_LIMIT_MB, fitted_note, over_file_limit
from training.oof import oof_summary, teacher_comparison, write_oof_csv
from training.prepare import load_index
from training.tasks import TASKS
from training.train import TrainConfig, train
from workbench.calibration import softmax
from workbench.io.idrid import IDRiD
from workbench.io.splits import assign_folds
from workbench.metrics import grading_metrics, json_safe

__all__ = ["predict_oof", "ship_cv_model", "ship_fold_piece", "train_folds", "train_piece"]

log = logging.getLogger(__name__)


def _fold_config(cfg: TrainConfig, fold: int) -> TrainConfig:
    return replace(cfg, fold=fold, refit=False, select="last", ship=False, run_name=f"{cfg.name}/fold{fold}")


def _refit_config(cfg: TrainConfig) -> TrainConfig:
    return replace(cfg, fold=-1, refit=True, select="last", ship=False, run_name=f"{cfg.name}/refit")


@torch.inference_mode()
def _logits(model: torch.nn.Module, data: GradingData, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8) logits of the plain images and of their horizontal mirrors."""
    plain, flipped = [], []
    device = next(model.parameters()).device
    for start in range(0, len(data), batch):
        images = torch.stack([data[i][0] for i in range(start, min(start + batch, len(data)))]).to(device)
        plain.append(model(images).float().cpu().numpy())
        flipped.append(model(images.flip(-1)).float().cpu().numpy())
    return np.concatenate(plain), np.concatenate(flipped)


def predict_oof(cfg: TrainConfig, only: list[int] | None = None) -> dict[str, np.ndarray]:
    """Every image predicted once, by the fold model that did not train on it (``only``: those folds)."""
    task = TASKS["grader"](_fold_config(cfg, only[0] if only else 0))
    card = task.card()
    folder = task._cache("grading", 512)
    entries = {e.name: e for e in load_index(folder)}
    folds = assign_folds(IDRiD(cfg.data).grading("train"), cfg.folds, cfg.split_seed)
    names, fold_of, plain, flipped = [], [], [], []
    for fold in range(cfg.folds) if only is None else only:
        held = sorted(n for n, f in folds.items() if f == fold and n in entries)
        if cfg.limit:
            held = held[: cfg.limit]
        model = build_model(card.with_updates(extra={**card.extra, "imagenet_init": False}))
        run_dir = Path(cfg.runs) / _fold_config(cfg, fold).name
        model.load_state_dict(load_file(str(run_dir / "best.safetensors")))
        model.eval().to(exact_device(cfg.device))
        data = GradingData(folder, [entries[n] for n in held], card, None, cfg.seed)
        p, q = _logits(model, data)
        names += held
        fold_of += [fold] * len(held)
        plain.append(p)
        flipped.append(q)
    return {
        "names": np.array(names),
        "fold": np.array(fold_of),
        "dr_true": np.array([entries[n].dr_grade for n in names]),
        "dme_true": np.array([entries[n].dme_grade for n in names]),
        "logits": np.concatenate(plain),
        "logits_flip": np.concatenate(flipped),
    }


def train_piece(cfg: TrainConfig, command: str = "") -> dict[str, Any]:
    """Run (or resume) one piece of a ``--folds`` run: fold ``cfg.fold``, or the refit (``cfg.refit``).

    Same run folders and settings as ``train_folds``, which then finds the piece finished.
    """
    if cfg.folds < 2 or not (0 <= cfg.fold < cfg.folds or cfg.refit):
        raise ValueError(f"need --folds >= 2 and --fold in 0..{cfg.folds - 1} or --refit")
    _check_teacher(cfg)
    base = replace(cfg, fold=-1, refit=False)
    result = train(_refit_config(base) if cfg.refit else _fold_config(base, cfg.fold), command)
    if cfg.ship and not cfg.refit:
        if result.get("stopped_early_at_epoch") and not cfg.stop_after:
            raise ValueError(
                f"fold {cfg.fold} stopped at epoch {result['epoch']} of "
                f"{result.get('schedule_epochs', cfg.epochs)} (time budget): not shipped; run the command "
                "again to finish it, or add --stop-after N to ship the cut run"
            )
        result["shipped"] = ship_fold_piece(replace(base, ship_fold=cfg.fold), command)
    return result


def ship_fold_piece(cfg: TrainConfig, command: str = "") -> str:
    """Ship fold ``cfg.ship_fold``'s model of a run whose other folds were never trained (a CPU budget
    buys one fold of a slow recipe): its figures are those of its own held-out fold only, said so."""
    oof = predict_oof(cfg, only=[cfg.ship_fold])
    return ship_cv_model(cfg, oof_summary(cfg.folds, oof, command), command, oof)


def _check_teacher(cfg: TrainConfig) -> None:
    """A per-fold teacher (``{fold}`` in ``--teacher-model``) has no teacher for a refit on all images."""
    per_fold = "{fold}" in cfg.teacher_model
    if per_fold and (cfg.refit or (cfg.fold < 0 and cfg.ship_fold < 0)):
        raise ValueError(
            f"--teacher-model {cfg.teacher_model} names one teacher per fold, so there is none for a refit: "
            "give --ship-fold K (ship fold K's model) or one teacher folder"
        )


def train_folds(cfg: TrainConfig, command: str = "") -> dict[str, Any]:
    """Run (or resume) every fold, the OOF evaluation and the refit; returns the OOF summary."""
    if cfg.folds < 2:
        raise ValueError(f"--folds must be >= 2, got {cfg.folds}")
    _check_teacher(cfg)
    root = Path(cfg.runs) / cfg.name
    for fold in range(cfg.folds):
        train(_fold_config(cfg, fold), command)
    oof = predict_oof(cfg)
    np.savez(root / "oof.npz", **oof)
    summary = oof_summary(cfg.folds, oof, command)
    (root / "oof.json").write_text(json.dumps(json_safe(summary), indent=1))
    log.info("OOF written to %s", root / "oof.json")
    if cfg.ship_fold < 0:
        summary["refit_epochs"] = train(_refit_config(cfg), command)["epoch"]
    if cfg.ship:
        summary["shipped"] = ship_cv_model(cfg, summary, command, oof)
    return summary


def _fold_schedules(cfg: TrainConfig) -> dict[str, int]:
    """Each fold's schedule length where ``--fit-minutes`` fitted it (pieces fit their own pace)."""
    found = {}
    for fold in range(cfg.folds):
        path = Path(cfg.runs) / _fold_config(cfg, fold).name / "state.json"
        if path.is_file() and "schedule_epochs" in (state := json.loads(path.read_text())):
            found[f"fold{fold}"] = int(state["schedule_epochs"])
    return found


def _source_config(cfg: TrainConfig) -> TrainConfig:
    return _fold_config(cfg, cfg.ship_fold) if cfg.ship_fold >= 0 else _refit_config(cfg)


def _all_logits(model: torch.nn.Module, cfg: TrainConfig, card) -> np.ndarray:
    task = TASKS["grader"](_refit_config(cfg))
    folder = task._cache("grading", 512)
    entries = load_index(folder)
    data = GradingData(folder, entries[: cfg.limit] if cfg.limit else entries, card, None, cfg.seed)
    return _logits(model, data)[0]


def ship_cv_model(cfg: TrainConfig, summary: dict[str, Any], command: str, oof: dict[str, np.ndarray]) -> str:
    """Export the refit (or fold ``cfg.ship_fold``'s model) with the OOF temperatures and figures in its
    card; fp16 when it changes nothing.

    fp16 "changes nothing" when, over every training image, the fp16 copy gives the same DR grade, DME
    grade and referable decision as fp32 (the largest probability change is recorded in the card).
    """
    from dataclasses import fields

    from models.hashing import file_sha256
    from models.registry import SHIPPED_WEIGHTS_DIR, save_model
    from training.export import git_commit, initialisation

    variant = summary["plain"]  # what inference computes (no test-time flip: it would halve throughput)
    source = _source_config(cfg)
    base = TASKS["grader"](source).card()
    temperature = variant["temperature"]
    extra = {
        **base.extra,
        "imagenet_init": False,
        "initialised_from": initialisation(source, base),
        "temperature": temperature,
    }
    card = base.with_updates(extra=extra)
    model = build_model(card)
    model.load_state_dict(load_file(str(Path(cfg.runs) / source.name / "best.safetensors")))
    state = json.loads((Path(cfg.runs) / source.name / "state.json").read_text())
    epochs_run, schedule = int(state["epoch"]), int(state.get("schedule_epochs", cfg.epochs))
    model.eval()
    half = build_model(card)
    half.load_state_dict(
        {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    half.eval()
    device = exact_device(cfg.device)
    full, reduced = _all_logits(model.to(device), cfg, card), _all_logits(half.to(device), cfg, card)
    model.cpu()
    p32 = np.concatenate([softmax(full[:, :NUM_DR]), softmax(full[:, NUM_DR:])], axis=1)
    p16 = np.concatenate([softmax(reduced[:, :NUM_DR]), softmax(reduced[:, NUM_DR:])], axis=1)
    same = bool(
        (full[:, :NUM_DR].argmax(1) == reduced[:, :NUM_DR].argmax(1)).all()
        and (full[:, NUM_DR:].argmax(1) == reduced[:, NUM_DR:].argmax(1)).all()
        and ((p32[:, 2:NUM_DR].sum(1) >= 0.5) == (p16[:, 2:NUM_DR].sum(1) >= 0.5)).all()
    )
    max_diff = float(np.abs(p32 - p16).max())
    use_half = same or over_file_limit(model)
    figures = {k: v for k, v in variant.items() if k != "reliability_dr"}
    assigned = assign_folds(IDRiD(cfg.data).grading("train"), cfg.folds, cfg.split_seed)
    fold_sizes = np.bincount(list(assigned.values()), minlength=cfg.folds).tolist()
    if cfg.ship_fold >= 0:
        held = oof["fold"] == cfg.ship_fold
        trained = len(assigned) - fold_sizes[cfg.ship_fold]
        trained_on = f"folds other than {cfg.ship_fold} ({trained} of {len(assigned)} images)"
        own = grading_metrics(
            softmax(oof["logits"][held][:, :NUM_DR], temperature["dr"]),
            softmax(oof["logits"][held][:, NUM_DR:], temperature["dme"]),
            oof["dr_true"][held].astype(int),
            oof["dme_true"][held].astype(int),
        )
    else:
        trained_on, own = f"all {summary['n']} images (refit)", None
    partial = len(np.unique(oof["fold"])) < cfg.folds  # only some folds trained (``ship_fold_piece``)
    if partial:
        scored = f"fold {cfg.ship_fold} held out ({summary['n']} images; the other folds were not trained)"
        held_key = f"held_out_fold_{cfg.ship_fold}"
        own = None
    else:
        scored = f"{cfg.folds}-fold out-of-fold predictions of the same recipe"
        held_key = "oof"
    evaluation = {
        held_key: {
            **figures,
            "folds": cfg.folds,
            "fold_sizes": fold_sizes,
            "note": (
                f"fold {cfg.ship_fold}'s images only, predicted by the model that did not train on them"
                if partial
                else "each image predicted by the fold model that did not train on it"
            )
            + "; intervals are percentile bootstrap (1000 resamples) over images",
            "reliability_dr": variant["reliability_dr"],
        },
        **({f"held_out_fold_{cfg.ship_fold}": own} if own else {}),
        f"{held_key}_hflip_tta": {
            k: summary["hflip_tta"][k]
            for k in ("dr_accuracy", "dr_qwk", "dme_accuracy", "joint_accuracy", "referable_auc", "ci95")
        },
    }
    if cfg.teacher_model and (comparison := teacher_comparison(cfg.teacher_model, oof)):
        evaluation["teacher_comparison"] = comparison
    training = {
        "data": f"IDRiD grading training images ({cfg.data}): {trained_on}; figures: {scored} "
        "(folds stratified by DR grade, duplicates together)",
        "command": command or "drwb train grader --folds",
        "commit": git_commit(),
        "epochs_run": epochs_run,
        "schedule": (
            f"time-fitted: {fitted_note(state)}"
            if "schedule_epochs" in state
            else f"fixed: {schedule} epochs, cosine"
        )
        + ", last epoch kept (no epoch chosen on held-out data)"
        + (f"; stopped after epoch {epochs_run}" if epochs_run < schedule else ""),
        **({"fold_schedules": folds_fitted} if (folds_fitted := _fold_schedules(cfg)) else {}),
        "config": {f.name: getattr(source, f.name) for f in fields(source)},
        **({"recipe": recipe} if (recipe := TASKS["grader"](source).recipe()) else {}),
        "evaluation": evaluation,
        "storage": "fp16" if use_half else "fp32",
        "fp16_check": {
            "same_grades": same,
            "max_probability_change": max_diff,
            "dr_grade_changes": int((full[:, :NUM_DR].argmax(1) != reduced[:, :NUM_DR].argmax(1)).sum()),
            "dme_grade_changes": int((full[:, NUM_DR:].argmax(1) != reduced[:, NUM_DR:].argmax(1)).sum()),
            "fp32_over_file_limit_mb": FILE_LIMIT_MB if over_file_limit(model) else None,
        },
    }
    stem = cfg.ship_name or cfg.name
    folder = Path(cfg.ship_dir or SHIPPED_WEIGHTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    # the OOF predictions travel with the model, so anyone can re-score them (`drwb evaluate --oof`)
    write_oof_csv(oof, folder / f"{stem}.oof.csv")
    training["evaluation"][held_key]["predictions"] = {
        "file": f"{stem}.oof.csv",
        "sha256": file_sha256(folder / f"{stem}.oof.csv"),
        # the folder as the command named it (relative to the repository), where the CSV was written
        "rescore": f"drwb evaluate --task grading --data {cfg.data} "
        f"--oof {Path(cfg.ship_dir or 'models/weights') / f'{stem}.oof.csv'}",
    }
    final = card.with_updates(name=card.name, weights=f"{stem}.safetensors", training=json_safe(training))
    return save_model(model, final, folder, half=use_half).weights
