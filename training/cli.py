"""``drwb train``: its flags (every ``TrainConfig`` field a run may set) and its handler.

Imports nothing heavy at module level: ``drwb --help`` builds these flags without loading torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["TRAIN_TASKS", "add_train_arguments", "run_train"]

TRAIN_TASKS = ("grader", "segmenter", "localizer", "disc", "fovea")

# --flag, type (None: not given, so a --config file or the TrainConfig default applies)
_VALUE_FLAGS: tuple[tuple[str, type], ...] = (
    ("data", str),
    ("cache", str),
    ("runs", str),
    ("run-name", str),
    ("model-name", str),
    ("backbone", str),
    ("epochs", int),
    ("batch-size", int),
    ("lr", float),
    ("input-size", int),
    ("tile", int),
    ("tiles-per-image", int),
    ("seed", int),
    ("fold-seed", int),
    ("limit", int),
    ("threads", int),
    ("max-minutes", float),
    ("fit-minutes", float),
    ("stop-after", int),
    ("ship-name", str),
    ("ship-dir", str),
    ("val-fraction", float),
    ("folds", int),
    ("select", str),
    ("freeze-blocks", int),
    ("ordinal-weight", float),
    ("sampling", str),
    ("ship-fold", int),
    ("device", str),
    ("precision", str),
    ("init-from", str),
    ("loader-workers", int),
    ("val-every", int),
    ("guides", str),
    ("attention-weight", float),
    ("teacher", str),
    ("distill-weight", float),
    ("distill-temperature", float),
    ("teacher-model", str),
    ("hint-weight", float),
    ("layer-scale-init", float),
    ("feature-weight", float),
    ("weight-decay", float),
    ("warmup-epochs", float),
    ("lesion-rates", str),
    ("focal-gamma", float),
    ("channels-from", str),
    ("inference-tiling", str),
    ("fold", int),
    ("fine-attention", int),
)
# on/off flags and their help
_SWITCHES: tuple[tuple[str, str], ...] = (
    ("ship", "export the best checkpoint to models/weights"),
    ("no-pretrained", "random init (no ImageNet)"),
    ("refit", "with --folds: train only the refit on all images"),
    ("unlabelled", "grader: add segmentation-only photographs"),
    ("no-norm-decay", "no weight decay on 1-D parameters"),
    ("freeze-backbone", "grader: train only the attention pools and heads"),
    ("mirror-tiles", "segmenter: at inference each tile's logits are averaged with its mirror's (extra.tta)"),
    (
        "reuse-teacher-head",
        "grader: a 1x1 neck into the teacher's feature space, starting from its pools and heads",
    ),
)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The task, ``--config`` and every training flag on ``parser``."""
    parser.add_argument("task", choices=TRAIN_TASKS)
    parser.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    for flag, kind in _VALUE_FLAGS:
        parser.add_argument(f"--{flag}", type=kind, default=None)
    for flag, text in _SWITCHES:
        parser.add_argument(f"--{flag}", action="store_true", default=None, help=text)


def run_train(args: argparse.Namespace) -> int:
    """Train (or resume) the run ``args`` describe: one run, one piece of a ``--folds`` run, or all of it."""
    from training.train import TrainConfig, train

    values: dict[str, object] = {}
    if args.config:
        import yaml

        values.update(yaml.safe_load(Path(args.config).read_text()) or {})
    values.update(
        {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    )
    values["task"] = args.task
    cfg, command = TrainConfig(**values), args.command_line
    if cfg.folds and (cfg.fold >= 0 or cfg.refit):
        # one piece of a --folds run (fold K, or the refit), so that pieces can run in parallel; the
        # full --folds command afterwards finds them finished and only scores and ships
        from training.cv import train_piece

        result = train_piece(cfg, command)
        print(json.dumps({"run": result["config"]["run_name"], "epochs": result["epoch"]}))
        return 0
    if cfg.folds:
        from training.cv import train_folds

        summary = train_folds(cfg, command)
        print(json.dumps({k: summary[k] for k in ("folds", "n", "fold_sizes")}))
        return 0
    result = train(cfg, command=command)
    print(
        json.dumps(
            {
                "best_epoch": result.get("best_epoch"),
                "best": result.get("best_metrics"),
                "shipped": result.get("shipped"),
            }
        )
    )
    return 0
