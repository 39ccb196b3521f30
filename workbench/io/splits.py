"""Deterministic, stratified train/validation split that never separates duplicate images.

IDRiD's grading training set holds byte-identical pairs (e.g. IDRiD_021 = IDRiD_391). If one copy lands
in training and the other in validation, validation accuracy is inflated by memorisation. Duplicates are
found by content hash (so unknown pairs in other copies of the data are caught too) and each group of
identical files moves as one unit. Strata are DR grades; within a stratum, groups are ordered by a
seeded hash of their names, so the split does not depend on file-system order or on Python's RNG.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.hashing import file_sha256
from workbench.io.idrid import GradingRecord

__all__ = [
    "Split",
    "assign_folds",
    "content_hash",
    "duplicate_groups",
    "split_names",
    "split_seed",
    "split_train_val",
]


@dataclass(frozen=True)
class Split:
    """Names of the records in each part."""

    train: tuple[str, ...]
    val: tuple[str, ...]


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes (``models.hashing.file_sha256``)."""
    return file_sha256(path)


def duplicate_groups(records: Sequence[GradingRecord]) -> list[tuple[str, ...]]:
    """Groups of record names whose image files are byte-identical (every group has >= 2 names)."""
    by_hash: dict[str, list[str]] = defaultdict(list)
    for record in records:
        by_hash[content_hash(record.image_path)].append(record.name)
    return sorted(tuple(sorted(names)) for names in by_hash.values() if len(names) > 1)


def split_seed(config: Mapping[str, Any]) -> int:
    """The seed of a run's folds and validation split, from its config (``training.train.TrainConfig``
    fields, or a card's / saved state's ``config``): ``fold_seed`` when given (>= 0), else ``seed``."""
    fold_seed = int(config.get("fold_seed", -1))
    return fold_seed if fold_seed >= 0 else int(config.get("seed", 0))


def _order_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def split_train_val(records: Sequence[GradingRecord], val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split grading records into train and validation.

    Stratified by DR grade: each grade contributes ``round(n_grade * val_fraction)`` images (at least one
    when the grade has two or more groups), counted in images. Byte-identical duplicates stay together; a
    group's stratum is the grade of its first member.

    Args:
        records: grading records (all from one split of one folder).
        val_fraction: share of each grade that goes to validation, in (0, 1).
        seed: changes which images are chosen, deterministically.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    grade = {record.name: record.dr_grade for record in records}
    groups = _groups(records)
    strata: dict[int, list[tuple[str, ...]]] = defaultdict(list)
    for group in groups:
        strata[grade[group[0]]].append(group)
    val: list[str] = []
    for stratum in sorted(strata):
        members = sorted(strata[stratum], key=lambda g: _order_key(seed, g[0]))
        target = round(sum(len(g) for g in members) * val_fraction)
        if len(members) >= 2:
            target = max(1, target)
        taken = 0
        for group in members:
            if taken >= target:
                break
            val.extend(group)
            taken += len(group)
    val_set = set(val)
    train = tuple(sorted(r.name for r in records if r.name not in val_set))
    return Split(train=train, val=tuple(sorted(val_set)))


def _groups(records: Sequence[GradingRecord]) -> list[tuple[str, ...]]:
    grouped: set[str] = set()
    groups: list[tuple[str, ...]] = []
    for group in duplicate_groups(records):
        groups.append(group)
        grouped.update(group)
    groups.extend((record.name,) for record in records if record.name not in grouped)
    return groups


def assign_folds(records: Sequence[GradingRecord], folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Name -> fold in ``range(folds)`` for k-fold cross-validation.

    Stratified by DR grade and duplicate-safe, like ``split_train_val``: byte-identical images form one
    group that lands in one fold; within each grade, groups (ordered by a seeded hash of their first name)
    go to the fold that holds the fewest images of that grade so far (ties: the fold with fewest images
    overall, then the lowest index). Every record gets exactly one fold.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    grade = {record.name: record.dr_grade for record in records}
    strata: dict[int, list[tuple[str, ...]]] = defaultdict(list)
    for group in _groups(records):
        strata[grade[group[0]]].append(group)
    assigned: dict[str, int] = {}
    totals = [0] * folds
    for stratum in sorted(strata):
        per_fold = [0] * folds
        for group in sorted(strata[stratum], key=lambda g: _order_key(seed, g[0])):
            fold = min(range(folds), key=lambda f: (per_fold[f], totals[f], f))
            for name in group:
                assigned[name] = fold
            per_fold[fold] += len(group)
            totals[fold] += len(group)
    return assigned


def split_names(names: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Deterministic unstratified split of plain names (segmentation images have no grade to stratify)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    ordered = sorted(names, key=lambda name: _order_key(seed, name))
    n_val = max(1, round(len(ordered) * val_fraction)) if len(ordered) >= 2 else 0
    return Split(train=tuple(sorted(ordered[n_val:])), val=tuple(sorted(ordered[:n_val])))
