"""Which images a shipped grader trained on, and which evaluation images are the same photographs.

IDRiD's segmentation images are full-size originals (4288x2848); 42 of them are also grading images,
stored 4x smaller. Names differ between the two parts, and other copies of the data need not come with
a mapping table, so photographs are matched by content: a 256x170 green-channel thumbnail, band-pass
filtered (so the field-of-view disc every fundus shares drops out and the vessel pattern remains),
zero-mean and unit-norm, compared by cosine similarity. On the real data the same photograph at another
resolution scores >= 0.996 and different photographs <= 0.85 (``MATCH_THRESHOLD`` = 0.95; tested).

The training images of a grader follow from its card: a refit trained on every grading image; a fold
model on every fold but its own; otherwise the deterministic validation split's training part.

Where the training data is not at hand (a deployed app auditing a user's folder), a grader's card carries,
for each training photograph (written by ``drwb provenance``), the sha256 of its file
(``TRAINED_FILES_KEY``) and a 256-bit perceptual fingerprint of its field of view
(``TRAINED_FINGERPRINTS_KEY``, ``fundus_fingerprint``), so an audit can say which audited photographs the
grader trained on: identical files, and the same photograph at another size or JPEG quality (the official
4288-px IDRiD download against the 1072-px copies the shipped graders trained on). A fingerprint is the
sign pattern of the band-passed green channel on a 16x16 grid, not an image; on the real data the same
photograph at 4x another resolution differed in at most 10 of 256 bits (42 pairs), different photographs
in at least 18 (413 photographs; byte-identical duplicates aside), hence ``FINGERPRINT_MAX_BITS`` = 14.
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
from workbench.fundus import prepare_fundus
from workbench.io.idrid import IDRiD
from workbench.io.image_io import load_image
from workbench.io.splits import assign_folds, split_seed, split_train_val

__all__ = [
    "FINGERPRINT_MAX_BITS",
    "MATCH_THRESHOLD",
    "TRAINED_FILES_KEY",
    "TRAINED_FINGERPRINTS_KEY",
    "fundus_fingerprint",
    "image_signature",
    "matching_names",
    "record_trained_files",
    "seen_in_training",
    "trained_grading_names",
]

MATCH_THRESHOLD = 0.95
TRAINED_FILES_KEY = "trained_files_sha256"  # under a grader card's ``training``: sorted file hashes
TRAINED_FINGERPRINTS_KEY = "trained_fingerprints"  # the same photographs' ``fundus_fingerprint``, sorted
FINGERPRINT_MAX_BITS = 14  # at most this many of 256 bits apart: the same photograph (module docstring)
_FINGERPRINT_GRID = 16
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
    seed = split_seed(config)  # --fold-seed when given, else --seed
    if int(config.get("fold", -1)) >= 0:
        folds = assign_folds(records, int(config["folds"]), seed)
        return {n for n, f in folds.items() if f != int(config["fold"])}
    split = split_train_val(records, float(config.get("val_fraction", 0.2)), seed)
    return set(split.train)


def fundus_fingerprint(crop: np.ndarray) -> str:
    """64 hex digits: which cells of a 16x16 grid over the band-passed green channel of a field-of-view
    crop (``workbench.fundus.prepare_fundus``, (S, S, 3) uint8 RGB) lie above the median. The band-pass
    removes the illumination and the field-of-view disc every fundus shares; what remains is the pattern
    of vessels and lesions, which resizing and JPEG compression barely move."""
    green = cv2.resize(crop[..., 1].astype(np.float32), (128, 128), interpolation=cv2.INTER_AREA)
    band = green - cv2.GaussianBlur(green, (0, 0), 6)
    grid = cv2.resize(band, (_FINGERPRINT_GRID, _FINGERPRINT_GRID), interpolation=cv2.INTER_AREA)
    return np.packbits(grid.ravel() > np.median(grid)).tobytes().hex()


def _fingerprint_file(path: Path) -> str:
    return fundus_fingerprint(prepare_fundus(load_image(path, min_side=512), 512).crop)


def _bits(fingerprints: Sequence[str]) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex("".join(fingerprints)), np.uint8)).reshape(
        len(fingerprints), -1
    )


def record_trained_files(card_path: Path, dataset: IDRiD) -> int:
    """Write into the grader card at ``card_path`` the sorted sha256 of the files of the grading images
    it trained on (``TRAINED_FILES_KEY``) and their fingerprints (``TRAINED_FINGERPRINTS_KEY``); the
    weights and their sha256 are untouched. Returns how many photographs.
    Raises ValueError for a card that is not a grader's or does not say what it trained on."""
    card = ModelCard.read(card_path)
    if card.arch != "grader":
        raise ValueError(f"{card_path.name}: a {card.arch} card; only graders' training files are recorded")
    names = trained_grading_names(card, dataset)
    if not names:
        raise ValueError(f"{card_path.name}: the card does not say which images the grader trained on")
    paths = [r.image_path for r in dataset.grading("train") if r.name in names]
    hashes = sorted(file_sha256(p) for p in paths)
    data = json.loads(card_path.read_text())
    data["training"][TRAINED_FILES_KEY] = hashes
    data["training"][TRAINED_FINGERPRINTS_KEY] = sorted(_fingerprint_file(p) for p in paths)
    card_path.write_text(json.dumps(data, indent=2) + "\n")
    return len(hashes)


def seen_in_training(
    card: ModelCard, paths: Sequence[Path], crops: Sequence[np.ndarray | None] | None = None
) -> list[bool | None] | None:
    """For each file, whether the grader of ``card`` trained on that photograph: the same file, or (given
    its field-of-view crop, ``crops[i]``) the same photograph at another size or quality, by fingerprint.
    None for a file that cannot be read (unknown, not "unseen"); None for all when the card carries no
    record (``record_trained_files``)."""
    known = card.training.get(TRAINED_FILES_KEY)
    if known is None:
        return None
    known = set(known)
    prints = card.training.get(TRAINED_FINGERPRINTS_KEY) or []
    reference = _bits(prints) if prints else None
    seen: list[bool | None] = []
    for index, path in enumerate(paths):
        try:
            same_file = file_sha256(path) in known
        except OSError:
            seen.append(None)
            continue
        crop = crops[index] if crops is not None else None
        if same_file or reference is None or crop is None:
            seen.append(same_file)
            continue
        distance = (reference != _bits([fundus_fingerprint(crop)])).sum(1).min()
        seen.append(bool(distance <= FINGERPRINT_MAX_BITS))
    return seen
