"""Which images a shipped grader trained on, and which evaluation images are the same photographs.

IDRiD's segmentation images are full-size originals (4288x2848); 42 of them are also grading images,
stored 4x smaller. Names differ between the two parts, and other copies of the data need not come with
a mapping table, so photographs are matched by content: a 256x170 green-channel thumbnail, band-pass
filtered (so the field-of-view disc every fundus shares drops out and the vessel pattern remains),
zero-mean and unit-norm, compared by cosine similarity. On the real data the same photograph at another
resolution scores >= 0.996 and different photographs <= 0.85 (``MATCH_THRESHOLD`` = 0.95; tested).

The training images of a grader follow from its card: a refit trained on every grading image; a fold
model on every fold but its own; otherwise the deterministic validation split's training part.

Where the training data is not at hand (a deployed app auditing a user's folder), a grader's card carries
the sha256 of each training image's file (``TRAINED_FILES_KEY``, written by ``drwb provenance``), so an
audit can say which of the audited files the grader trained on: identical files, the usual case when
someone audits on their own copy of IDRiD (a re-encoded copy is not recognised by this).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from models.card import ModelCard
from models.hashing import file_sha256
from workbench.io.idrid import IDRiD
from workbench.io.splits import assign_folds, split_train_val

__all__ = [
    "MATCH_THRESHOLD",
    "TRAINED_FILES_KEY",
    "image_signature",
    "matching_names",
    "record_trained_files",
    "seen_in_training",
    "trained_grading_names",
]

MATCH_THRESHOLD = 0.95
TRAINED_FILES_KEY = "trained_files_sha256"  # under a grader card's ``training``: sorted file hashes
_THUMB = (256, 170)


def image_signature(path: Path) -> np.ndarray:
    """Unit-norm, zero-mean high-pass green thumbnail of a photograph (decoded at reduced size: cheap)."""
    with Image.open(path) as image:
        image.draft("RGB", (_THUMB[0] * 2, _THUMB[1] * 2))
        rgb = np.asarray(image.convert("RGB").resize(_THUMB, Image.Resampling.BOX), np.float32)
    green = cv2.GaussianBlur(rgb[..., 1], (0, 0), 1.0)
    band = green - cv2.GaussianBlur(green, (0, 0), 6)
    # the field-of-view rim is a strong edge every fundus shares: keep only the inside
    inside = cv2.erode((rgb[..., 0] > 20).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    values = np.where(inside, band, 0).astype(np.float64).ravel()
    values -= values.mean()
    norm = np.linalg.norm(values)
    return values / norm if norm > 0 else values


def matching_names(queries: Sequence[Path], references: dict[str, Path]) -> dict[int, list[str]]:
    """For each query (by index), the reference names that are the same photograph."""
    names = list(references)
    if not names or not queries:
        return {i: [] for i in range(len(queries))}
    ref = np.stack([image_signature(references[n]) for n in names])
    out = {}
    for i, path in enumerate(queries):
        similarity = ref @ image_signature(path)
        out[i] = [names[j] for j in np.nonzero(similarity >= MATCH_THRESHOLD)[0]]
    return out


def trained_grading_names(card: ModelCard, dataset: IDRiD) -> set[str]:
    """Names of the grading training images the grader of ``card`` was trained on (empty if unknown); an
    ensemble's (``training.member_configs``): every image any of its members trained on."""
    if members := card.training.get("member_configs"):
        return set().union(
            *(
                trained_grading_names(card.with_updates(training={"config": c}), dataset)
                for c in members.values()
            )
        )
    config = card.training.get("config") or {}
    if not config:
        return set()
    records = dataset.grading("train")
    if config.get("refit"):
        return {r.name for r in records}
    if int(config.get("fold", -1)) >= 0:
        folds = assign_folds(records, int(config["folds"]), int(config.get("seed", 0)))
        return {n for n, f in folds.items() if f != int(config["fold"])}
    split = split_train_val(records, float(config.get("val_fraction", 0.2)), int(config.get("seed", 0)))
    return set(split.train)


def record_trained_files(card_path: Path, dataset: IDRiD) -> int:
    """Write into the grader card at ``card_path`` the sorted sha256 of the files of the grading images
    it trained on (``TRAINED_FILES_KEY``; the weights and their sha256 are untouched); returns how many.
    Raises ValueError for a card that is not a grader's or does not say what it trained on."""
    card = ModelCard.read(card_path)
    if card.arch != "grader":
        raise ValueError(f"{card_path.name}: a {card.arch} card; only graders' training files are recorded")
    names = trained_grading_names(card, dataset)
    if not names:
        raise ValueError(f"{card_path.name}: the card does not say which images the grader trained on")
    hashes = sorted(file_sha256(r.image_path) for r in dataset.grading("train") if r.name in names)
    data = json.loads(card_path.read_text())
    data["training"][TRAINED_FILES_KEY] = hashes
    card_path.write_text(json.dumps(data, indent=2) + "\n")
    return len(hashes)


def seen_in_training(card: ModelCard, paths: Sequence[Path]) -> list[bool | None] | None:
    """For each file, whether it is byte for byte one the grader of ``card`` trained on (None for a file
    that cannot be read: unknown, not "unseen"); None when the card carries no record
    (``record_trained_files``)."""
    known = card.training.get(TRAINED_FILES_KEY)
    if known is None:
        return None
    known = set(known)
    seen: list[bool | None] = []
    for path in paths:
        try:
            seen.append(file_sha256(path) in known)
        except OSError:
            seen.append(None)
    return seen
