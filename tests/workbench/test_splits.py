"""Validation split: deterministic, stratified, duplicates found by content hash stay together."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from workbench.io.idrid import GradingRecord, IDRiD
from workbench.io.splits import duplicate_groups, split_names, split_train_val


def _records(tmp_path: Path, n: int = 50) -> list[GradingRecord]:
    records = []
    for index in range(n):
        path = tmp_path / f"img{index}.jpg"
        # Images 0 and 1 are byte-identical, as are 10 and 40.
        content = {1: 0, 40: 10}.get(index, index)
        path.write_bytes(f"pixels {content}".encode())
        records.append(GradingRecord(f"IDRiD_{index:03d}", path, index % 5, 0))
    return records


def test_duplicates_detected_by_content(tmp_path: Path) -> None:
    assert duplicate_groups(_records(tmp_path)) == [("IDRiD_000", "IDRiD_001"), ("IDRiD_010", "IDRiD_040")]


def test_split_is_deterministic_and_keeps_duplicates_together(tmp_path: Path) -> None:
    records = _records(tmp_path)
    first, second = split_train_val(records, 0.2, seed=0), split_train_val(records, 0.2, seed=0)
    assert first == second
    assert not set(first.train) & set(first.val)
    assert len(first.train) + len(first.val) == 50
    for group in duplicate_groups(records):
        sides = {name in first.val for name in group}
        assert len(sides) == 1
    assert split_train_val(records, 0.2, seed=1) != first


def test_split_is_stratified(tmp_path: Path) -> None:
    records = _records(tmp_path)
    split = split_train_val(records, 0.2)
    grades = Counter(records[int(name[-3:])].dr_grade for name in split.val)
    assert set(grades) == {0, 1, 2, 3, 4}
    assert all(1 <= count <= 3 for count in grades.values())


def test_split_names_and_bad_fraction() -> None:
    split = split_names([f"n{i}" for i in range(10)], 0.3)
    assert len(split.val) == 3 and len(split.train) == 7
    with pytest.raises(ValueError, match="val_fraction"):
        split_names(["a"], 1.5)


@pytest.mark.realdata
def test_real_split_keeps_known_duplicate_pairs_together(real_idrid: Path) -> None:
    records = IDRiD(real_idrid).grading("train")
    groups = duplicate_groups(records)
    known = (real_idrid / "extras/grading_duplicates_train.csv").read_text().split()[1:]
    assert {tuple(sorted(line.split(","))) for line in known} <= set(groups)
    split = split_train_val(records, 0.2, seed=0)
    for group in groups:
        assert len({name in split.val for name in group}) == 1
    assert 80 <= len(split.val) <= 86
    val_grades = Counter(r.dr_grade for r in records if r.name in set(split.val))
    assert val_grades[1] >= 3  # the rare mild grade is represented
