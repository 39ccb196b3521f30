"""``drwb ensemble``: several shipped graders combined into one grader, measured out of fold.

An ensemble is measured from the members' out-of-fold (OOF) predictions, which ship beside their cards
(``<member>.oof.csv``, ``training.cv``): for each image, each member's fold model that did not train on
it, on the image and on its mirror image. The members must come from cross-validations with the same
folds (same ``--folds`` and ``--fold-seed``, else ``--seed``), so that no image is scored by a model that
saw it. The ensemble then combines them as ``models.ensemble.GraderEnsemble`` does at inference (each
member's logits divided by its own temperature, averaged over members and views), fits its own
temperature on those OOF logits, and records the figures with bootstrap intervals, the same ensemble
without the mirror view, each member alone, and the paired difference to the first member. What ships:
the card and a weights file that holds the ensemble's temperature; the members' weights stay in their
own files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from models.card import ModelCard
from models.classifier import NUM_DR
from models.ensemble import ensemble_card
from models.hashing import file_sha256
from models.registry import weights_dir
from training.export import git_commit
from training.oof import oof_metrics, read_oof_csv, write_oof_csv
from workbench.calibration import softmax
from workbench.intervals import bootstrap_intervals
from workbench.io.idrid import IDRiD
from workbench.metrics import grading_metrics, json_safe
from workbench.predictors import GRADING_CROP

__all__ = ["build_ensemble", "combine_members", "member_oof", "oof_truth"]

_HEADLINE = ("dr_accuracy", "dr_qwk", "dme_accuracy", "joint_accuracy", "referable_auc")


def member_oof(stem: str, folder: Path, scaled: bool = True) -> tuple[ModelCard, dict[str, np.ndarray]]:
    """A shipped grader's card and its OOF logits, each view divided by the member's own temperature
    (as the member's forward pass divides them at inference), or as the fold models gave them when not
    ``scaled``."""
    card = ModelCard.read(folder / f"{stem}.json")
    oof = card.training.get("evaluation", {}).get("oof")
    if not oof or "predictions" not in oof:
        raise ValueError(
            f"{stem}: its card has no out-of-fold predictions (training.evaluation.oof.predictions); "
            "only graders shipped from `drwb train grader --folds` can join an ensemble"
        )
    path = (folder / stem).parent / oof["predictions"]["file"]
    if file_sha256(path) != oof["predictions"]["sha256"]:
        raise ValueError(f"{path}: sha256 differs from {stem}'s card")
    arrays = read_oof_csv(path)
    if not scaled:
        return card, arrays
    temperature = card.extra.get("temperature") or {}
    scale = np.array([float(temperature.get("dr", 1.0))] * NUM_DR + [float(temperature.get("dme", 1.0))] * 3)
    return card, {**arrays, "logits": arrays["logits"] / scale, "logits_flip": arrays["logits_flip"] / scale}


def oof_truth(stems: list[str], arrays: list[dict[str, np.ndarray]], data: Path) -> dict[str, np.ndarray]:
    """The labels (from ``data``) and folds of the members' OOF images, after checking that every member
    was cross-validated on the same images and folds (else no image is scored only by models that never
    saw it)."""
    first = arrays[0]
    for stem, member in zip(stems[1:], arrays[1:], strict=True):
        if not (
            np.array_equal(member["names"], first["names"]) and np.array_equal(member["fold"], first["fold"])
        ):
            raise ValueError(
                f"{stem} and {stems[0]} were cross-validated on different folds or images: their "
                "out-of-fold predictions cannot be combined (train both with the same --folds and "
                "--fold-seed, else --seed)"
            )
    labels = {r.name: r for r in IDRiD(data).grading("train")}
    return {
        "dr_true": np.array([labels[str(n)].dr_grade for n in first["names"]]),
        "dme_true": np.array([labels[str(n)].dme_grade for n in first["names"]]),
        "fold": first["fold"],  # for the cross-fitted calibration (training.oof.cross_fitted_ece)
    }


def combine_members(members: list[dict[str, np.ndarray]], flip: bool) -> np.ndarray:
    """The ensemble's logits: the mean of the members' (temperature-scaled) logits, over the image and its
    mirror too with ``flip`` (as ``models.ensemble.GraderEnsemble`` combines them)."""
    views = [(m["logits"] + m["logits_flip"]) / 2 if flip else m["logits"] for m in members]
    return np.mean(views, axis=0)


def _paired(
    ours: np.ndarray, theirs: np.ndarray, t_dr: np.ndarray, t_dme: np.ndarray, temps: tuple[dict, dict]
) -> dict[str, Any]:
    """Paired bootstrap of ensemble minus first member over the same images (each with its temperature)."""

    def probs(logits: np.ndarray, temperature: dict) -> tuple[np.ndarray, np.ndarray]:
        return softmax(logits[:, :NUM_DR], temperature["dr"]), softmax(logits[:, NUM_DR:], temperature["dme"])

    (a_dr, a_dme), (b_dr, b_dme) = probs(ours, temps[0]), probs(theirs, temps[1])

    def difference(idx: np.ndarray) -> dict[str, float]:
        mine = grading_metrics(a_dr[idx], a_dme[idx], t_dr[idx], t_dme[idx])
        other = grading_metrics(b_dr[idx], b_dme[idx], t_dr[idx], t_dme[idx])
        return {k: mine[k] - other[k] for k in _HEADLINE}

    every = np.arange(len(t_dr))
    return {"difference": difference(every), "ci95": bootstrap_intervals(len(every), difference, 2000)}


def build_ensemble(
    members: list[str],
    name: str,
    data: Path,
    flip: bool = True,
    folder: Path | None = None,
    out: Path | None = None,
    command: str = "",
) -> Path:
    """Measure the ensemble of shipped graders ``members`` (card stems in ``folder``) out of fold and
    write ``<name>.json``, ``<name>.safetensors`` (its temperature) and ``<name>.oof.csv`` to ``out``
    (default: ``folder``). Returns the card's path."""
    folder = Path(folder) if folder else weights_dir()
    out = Path(out) if out else folder
    if len(members) < 2:
        raise ValueError(f"an ensemble needs two or more members, got {members}")
    loaded = [member_oof(stem, folder) for stem in members]
    first = loaded[0][1]
    truth = oof_truth(members, [a for _, a in loaded], data)
    # members that cannot run as one module (normalisation, heads) are refused before any file
    card = ensemble_card([(stem, c) for stem, (c, _) in zip(members, loaded, strict=True)], flip)
    sizes = sorted({c.input_size for c, _ in loaded})
    if len(sizes) > 1 and sizes[-1] > GRADING_CROP:  # the smaller would see an enlarged crop shrunk again
        raise ValueError(
            f"members of different input sizes {sizes} need the largest within the {GRADING_CROP}-px "
            "grading crop: a smaller member would not see the crop as it does alone"
        )
    arrays = [a for _, a in loaded]
    plain = np.mean([a["logits"] for a in arrays], axis=0)
    mirrored = np.mean([a["logits_flip"] for a in arrays], axis=0)
    views = {"names": first["names"], "fold": first["fold"], "logits": plain, "logits_flip": mirrored}
    combined = combine_members(arrays, flip)
    measured = oof_metrics({**truth, "logits": combined, "logits_flip": combined}, tta=False)
    other = oof_metrics(
        {**truth, "logits": combine_members(arrays, not flip), "logits_flip": plain}, tta=False
    )
    alone = {
        stem: {k: oof_metrics({**truth, **a}, tta=False)[k] for k in _HEADLINE}
        for stem, a in zip(members, arrays, strict=True)
    }
    first_temperature = {"dr": 1.0, "dme": 1.0}  # its logits are already divided by its own temperature
    paired = _paired(
        combined,
        arrays[0]["logits"],
        truth["dr_true"].astype(int),
        truth["dme_true"].astype(int),
        (measured["temperature"], first_temperature),
    )
    if flip:  # like for like: the first member with the same mirror view (its temperature refitted)
        single = (arrays[0]["logits"] + arrays[0]["logits_flip"]) / 2
        refitted = oof_metrics({**truth, "logits": single, "logits_flip": single}, tta=False)["temperature"]
        same_views = _paired(
            combined,
            single,
            truth["dr_true"].astype(int),
            truth["dme_true"].astype(int),
            (measured["temperature"], refitted),
        )
    temperature = measured["temperature"]
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    save_file(
        {"temperature": torch.tensor([temperature["dr"], temperature["dme"]], dtype=torch.float32)},
        str(weights),
        metadata={"format": "pt", "model": "grader_ensemble"},
    )
    write_oof_csv(views, out / f"{name}.oof.csv")
    evaluation = {
        "oof": {
            **{k: v for k, v in measured.items() if k != "reliability_dr"},
            "tta": "horizontal flip (mean of each member's logits on the image and its mirror)"
            if flip
            else "none",
            "folds": int(len(np.unique(first["fold"]))),
            "fold_sizes": np.bincount(first["fold"]).tolist(),
            "note": "each image predicted by each member's fold model that did not train on it; intervals "
            "are percentile bootstrap (1000 resamples) over images",
            "reliability_dr": measured["reliability_dr"],
            "predictions": {
                "file": f"{name}.oof.csv",
                "sha256": file_sha256(out / f"{name}.oof.csv"),
                "columns": "logit_*: mean over members of each member's temperature-scaled logits on the "
                "image; flip_logit_*: the same on the mirror image",
                "rescore": f"drwb evaluate --task grading --data {data} --oof models/weights/{name}.oof.csv "
                + (
                    "(its hflip_tta figures are this ensemble's)"
                    if flip
                    else "(its plain figures are this ensemble's)"
                ),
            },
        },
        "oof_without_flip" if flip else "oof_with_flip": {k: other[k] for k in (*_HEADLINE, "ci95")},
        "members_alone": alone,
        f"paired_minus_{members[0]}": {
            **paired,
            "note": f"ensemble minus {members[0]} (plain, its own temperature), the same {len(combined)} "
            "images, 2000 bootstrap resamples",
        },
    }
    if flip:
        evaluation[f"paired_minus_{members[0]}_with_flip"] = {
            **same_views,
            "note": f"like for like: ensemble minus {members[0]} with the same mirror view (mean of its "
            "logits on the image and its mirror, its own temperature refitted on those OOF logits); the same "
            f"{len(combined)} images, 2000 bootstrap resamples",
        }
    training = {
        "data": f"IDRiD grading training images ({data}); members trained as their cards say",
        "command": command or "drwb ensemble",
        "commit": git_commit(),
        "combination": "mean of the members' temperature-scaled logits over members"
        + (" and over the image and its horizontal mirror" if flip else "")
        + ", divided by the ensemble's temperature (fitted on these OOF logits)",
        "evaluation": evaluation,
        # which images the members trained on (workbench.provenance.trained_grading_names)
        "member_configs": {
            stem: c.training.get("config") or {} for stem, (c, _) in zip(members, loaded, strict=True)
        },
        "storage": "the weights file holds the ensemble's temperature only; members load from their files",
    }
    card = card.with_updates(
        weights=weights.name,
        sha256=file_sha256(weights),
        training=json_safe(training),
        extra={**card.extra, "temperature": temperature},
    )
    path = out / f"{name}.json"
    path.write_text(card.to_json() + "\n")
    return path
