"""Name -> builder registry, plus loading of shipped weights with sha256 verification.

The builder map lives in ``models._registry`` (imports no family); this module imports the families, so
importing it fills the map, and re-exports ``register_model`` and ``MODEL_REGISTRY``.
``build_model(card)`` builds an untrained module; ``load_model(name)`` reads ``models/weights/<name>.json``
and ``<name>.safetensors``, verifies the hash and loads with safetensors (no unpickling, ever).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models import classifier, ensemble, localizer, refiners, segmenter  # noqa: F401  (families fill the registry)
from models._registry import MODEL_REGISTRY, build_model, register_model
from models.card import ModelCard
from models.hashing import file_sha256

__all__ = [
    "MODEL_REGISTRY",
    "SHIPPED_WEIGHTS_DIR",
    "WeightsError",
    "build_model",
    "default_model",
    "ensemble_passes",
    "file_sha256",
    "held_out_fold_key",
    "list_shipped",
    "load_model",
    "load_run",
    "register_model",
    "save_model",
    "shipped_names",
    "weights_dir",
]

SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def weights_dir() -> Path:
    """Where faces read models from: ``$DRWB_WEIGHTS`` when set (tests point it at tiny random models),
    else the shipped folder. Read at call time, so a process can be pointed elsewhere after import."""
    return Path(os.environ.get("DRWB_WEIGHTS") or SHIPPED_WEIGHTS_DIR)


class WeightsError(ValueError):
    """Shipped weights are missing, do not match their card's sha256, or do not fit the architecture."""


def list_shipped(folder: Path | None = None) -> list[ModelCard]:
    """Cards of every shipped model (every ``*.json`` with weights beside it)."""
    folder = Path(folder) if folder else weights_dir()
    return [ModelCard.read(p) for p in sorted(Path(folder).glob("*.json"))]


def shipped_names(arch: str, folder: Path | None = None) -> list[str]:
    """Card stems of the shipped models of one arch ("grader", ...), sorted: what ``load_model`` takes."""
    return sorted(c.weights.removesuffix(".safetensors") for c in list_shipped(folder) if c.arch == arch)


def save_model(model: nn.Module, card: ModelCard, folder: Path, half: bool = True) -> ModelCard:
    """Write ``<card.name-or-stem>.safetensors`` (fp16 floats when ``half``) and its JSON card.

    Returns the card with ``weights`` and ``sha256`` filled in.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = card.weights.removesuffix(".safetensors") if card.weights else card.name
    weights_path = folder / f"{stem}.safetensors"
    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(weights_path), metadata={"format": "pt", "model": card.name})
    final = card.with_updates(weights=weights_path.name, sha256=file_sha256(weights_path))
    (folder / f"{stem}.json").write_text(final.to_json() + "\n")
    return final


def load_model(name: str, folder: Path | None = None) -> tuple[nn.Module, ModelCard]:
    """Load a shipped model by card stem, verify its hash and return ``(model.eval(), card)``.

    ``name`` may name a card in a subfolder (``members/grader_x``: a network that ships only as part of
    an ensemble); its weights file lies beside its card. An ensemble's card (``extra.members``) loads each
    member the same way and checks that the member is the one the ensemble was built with.
    """
    folder = Path(folder) if folder else weights_dir()
    card_path = Path(folder) / f"{name}.json"
    if not card_path.is_file():
        available = ", ".join(p.stem for p in sorted(Path(folder).glob("*.json"))) or "none"
        raise WeightsError(f"no model card {card_path}; shipped models: {available}")
    card = ModelCard.read(card_path)
    weights_path = card_path.parent / card.weights
    if not card.weights or not weights_path.is_file():
        raise WeightsError(f"{name}: weights file {weights_path} is missing")
    actual = file_sha256(weights_path)
    if actual != card.sha256:
        raise WeightsError(f"{name}: sha256 of {weights_path.name} is {actual}, card says {card.sha256}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights_path)).items()}
    if "members" in card.extra:
        model = _ensemble_of_members(name, card, folder)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("members.")]  # loaded from their own files
    else:
        model = build_model(card.with_updates(extra={**card.extra, "imagenet_init": False}))
        missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{name}: weights do not fit {card.name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    # Loaded for inference: channels_last, because the CPU convolutions (oneDNN) run 1.4-2x faster on
    # every shipped model with the same results within 3e-5 (saved state is made contiguous again), and
    # frozen, because no user of a loaded model needs weight gradients (explainers need input or
    # activation gradients only; training starts from a copy of the state). README "Speed and memory".
    model.requires_grad_(False)
    return model.to(memory_format=torch.channels_last).eval(), card


def load_run(folder: Path) -> tuple[nn.Module, ModelCard]:
    """The ``best`` weights of a training run's folder (``best.json`` + ``best.safetensors``, for example
    one fold of a ``--folds`` run) and its card, in eval mode (no hash: a run's card records none)."""
    folder = Path(folder)
    card = ModelCard.read(folder / "best.json")
    model = build_model(card.with_updates(extra={**card.extra, "imagenet_init": False}))
    model.load_state_dict(load_file(str(folder / "best.safetensors")))
    return model.eval(), card


def _ensemble_of_members(name: str, card: ModelCard, folder: Path) -> ensemble.GraderEnsemble:
    members, cards = [], []
    for entry in card.extra["members"]:
        member, member_card = load_model(entry["model"], folder)
        cards.append(member_card)
        if member_card.sha256 != entry["sha256"]:
            raise WeightsError(
                f"{name}: member {entry['model']} has weights {member_card.sha256[:12]}..., the ensemble was "
                f"built and measured with {entry['sha256'][:12]}...; rebuild it (`drwb ensemble`)"
            )
        members.append(member)
    names = [entry["model"] for entry in card.extra["members"]]
    return ensemble.GraderEnsemble(members, bool(card.extra.get("flip", True)), names=names, cards=cards)


def held_out_fold_key(evaluation: dict) -> str | None:
    """The ``held_out_fold_K`` entry of a card's ``training.evaluation`` (a grader shipped from one trained
    fold of a cross-validation, ``training.cv.ship_fold_piece``), or None."""
    return next((k for k in sorted(evaluation) if k.startswith("held_out_fold_") and "_hflip" not in k), None)


def ensemble_passes(members: int, flip: bool) -> int:
    """Forward passes a photograph costs an ensemble: its members times its views (``models.ensemble``:
    two with the mirror view)."""
    return members * (2 if flip else 1)


def forward_passes(card: ModelCard) -> int:
    """Forward passes a photograph costs: ``ensemble_passes`` of an ensemble, else 1."""
    members = card.extra.get("members")
    return ensemble_passes(len(members), bool(card.extra.get("flip"))) if members else 1


def default_model(
    arch: str, folder: Path | None = None, ensembles: bool = True, max_passes: int | None = None
) -> str:
    """Stem of the shipped model of ``arch`` with the best held-out score (the default in every face).

    Out-of-fold (cross-validated) figures outrank single-split validation figures: a validation score
    that also chose the best epoch is optimistic, so a model that has OOF figures is preferred over one
    that has only a validation score, and OOF scores are compared with each other. ``ensembles=False``
    ranks single networks only (``models.ensemble``): whatever explains or times one network.
    ``max_passes`` ranks only models that cost at most that many forward passes a photograph
    (``forward_passes``): the fast analysis profile.

    Raises:
        WeightsError: when no model of that family is shipped.
    """
    folder = Path(folder) if folder else weights_dir()
    ranked = []
    for path in sorted(Path(folder).glob("*.json")):
        card = ModelCard.read(path)
        if card.arch != arch or (not ensembles and "members" in card.extra):
            continue
        if max_passes is not None and forward_passes(card) > max_passes:
            continue
        evaluation = card.training.get("evaluation", {})
        # Prefer the product-pipeline measurement (drwb evaluate --write-card) over the training loop's.
        fold = held_out_fold_key(evaluation)
        measured = (
            evaluation.get("oof")
            or evaluation.get(fold or "")  # one held-out fold of a cross-validation: as good as a val split
            or evaluation.get("val")
            or card.training.get("validation", {})
        )
        score = measured.get("score")
        ranked.append(("oof" in evaluation, float("-inf") if score is None else float(score), path.stem))
    if not ranked:
        raise WeightsError(f"no shipped {arch} model in {folder}; train one with `drwb train`")
    return max(ranked, key=lambda r: (r[0], r[1]))[2]  # max() keeps the first (alphabetical) of equals
