"""`drwb selection-check`: nested cross-validation of choosing the best grader by OOF score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.classifier import NUM_DR
from training.selection import candidates, held_out_choice, nested_selection, record_selection

REPO = Path(__file__).resolve().parents[2]


def test_candidates_are_every_combination_within_the_cost() -> None:
    members = ["a", "b", "c"]
    assert len(candidates(members, None, mirror=False)) == 7
    pool = candidates(
        members, 4, mirror=True
    )  # three alone (one grader ships plain), pairs plain and mirrored
    assert len(pool) == 10 and (("a", "b"), True) in pool and (("a",), True) not in pool
    assert (("a", "b", "c"), True) not in pool  # six passes
    assert candidates(members, 3, mirror=False)[-1] == (("a", "b", "c"), False)


def _random_truth(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random DR and DME grades of ``n`` images in five folds."""
    return {
        "dr_true": rng.integers(0, NUM_DR, n),
        "dme_true": rng.integers(0, 3, n),
        "fold": np.arange(n) % 5,
    }


def _noise(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"logits": rng.normal(0, 1, (n, NUM_DR + 3)), "logits_flip": rng.normal(0, 1, (n, NUM_DR + 3))}


def test_choosing_among_noise_is_optimistic_and_the_nested_figure_says_so() -> None:
    """Twelve graders that know nothing: on average over datasets the best of them on every image looks
    better than chance (the winner's curse), the nested figure of the same choice does not. Chance: QWK 0,
    DME accuracy 1/3, so a score of 1/6."""
    n, optimism, nested = 200, [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        truth = {
            "dr_true": rng.integers(0, NUM_DR, n),
            "dme_true": rng.integers(0, 3, n),
            "fold": np.arange(n) % 5,
        }
        raw = {f"m{i}": _noise(n, 100 * seed + i + 1) for i in range(12)}
        result = nested_selection(raw, truth, candidates(list(raw), 1, mirror=False))
        assert result["candidates"] == 12 and len(result["picks"]) == 5
        optimism.append(result["optimism"]["score"])
        nested.append(result["nested"]["score"])
    assert np.mean(optimism) > 0.03
    assert abs(np.mean(nested) - 1 / 6) < 0.04


def test_a_grader_that_knows_is_picked_in_every_fold_and_keeps_its_figures() -> None:
    n = 300
    rng = np.random.default_rng(1)
    truth = _random_truth(rng, n)
    good = _noise(n, 7)
    good["logits"][np.arange(n), truth["dr_true"]] += 3.0
    good["logits"][np.arange(n), NUM_DR + truth["dme_true"]] += 3.0
    raw = {"good": good, "noise": _noise(n, 8)}
    result = nested_selection(raw, truth, candidates(list(raw), 1, mirror=False))
    assert set(result["picks"].values()) == {"good"} and result["selected_on_all"]["candidate"] == "good"
    assert result["nested"]["dr_accuracy"] > 0.8 and abs(result["optimism"]["dr_accuracy"]) < 0.02
    with pytest.raises(ValueError, match="no candidate"):
        nested_selection(raw, truth, [])


def test_no_held_out_label_reaches_the_choice_or_the_temperatures_of_its_fold() -> None:
    """Scrambling one fold's labels changes nothing that fold is graded with: its pick and its
    probabilities (member and ensemble temperatures included) come from the other folds only."""
    n = 250
    rng = np.random.default_rng(3)
    truth = _random_truth(rng, n)
    raw = {}
    for i in range(3):
        member = _noise(n, 20 + i)
        member["logits"][np.arange(n), truth["dr_true"]] += 1.0 + i  # members that know a little
        raw[f"m{i}"] = member
    pool = candidates(list(raw), 4, mirror=True)
    p_dr, p_dme, picks = held_out_choice(raw, truth, pool)
    held = truth["fold"] == 2
    scrambled = {**truth, "dr_true": truth["dr_true"].copy(), "dme_true": truth["dme_true"].copy()}
    scrambled["dr_true"][held] = rng.integers(0, NUM_DR, held.sum())
    scrambled["dme_true"][held] = rng.integers(0, 3, held.sum())
    q_dr, q_dme, again = held_out_choice(raw, scrambled, pool)
    assert again[2] == picks[2]
    np.testing.assert_array_equal(q_dr[held], p_dr[held])
    np.testing.assert_array_equal(q_dme[held], p_dme[held])
    assert not np.array_equal(q_dr[~held], p_dr[~held])  # the other folds did see the scrambled labels


def test_the_result_is_stored_only_in_the_card_of_the_grader_the_rule_picks(tmp_path: Path) -> None:
    members = [{"model": "members/b", "sha256": "b1"}, {"model": "a", "sha256": "a1"}]  # another order
    card = {"training": {}, "extra": {"members": members, "flip": False}}
    (tmp_path / "pair.json").write_text(json.dumps(card))
    (tmp_path / "other.json").write_text(json.dumps({"training": {}, "extra": {}}))
    picked = {"candidate": "a + members/b", "members": ["a", "members/b"], "mirror_view": False}
    result = {
        "selected_on_all": picked,
        "nested": {"score": 0.8},
        "member_sha256": {"a": "a1", "members/b": "b1"},
    }
    with pytest.raises(ValueError, match="members/b: the weights measured differ"):
        record_selection({**result, "member_sha256": {"a": "a1", "members/b": "b0"}}, "pair", tmp_path, "")
    with pytest.raises(ValueError, match="not pair"):
        record_selection({**result, "selected_on_all": {**picked, "mirror_view": True}}, "pair", tmp_path, "")
    record_selection(result, "pair", tmp_path, "drwb selection-check a members/b")
    stored = json.loads((tmp_path / "pair.json").read_text())["training"]["evaluation"]["selection_aware"]
    assert stored["command"] == "drwb selection-check a members/b" and stored["nested"] == {"score": 0.8}
    with pytest.raises(ValueError, match="picks a \\+ members/b on every image, not other"):
        record_selection(result, "other", tmp_path, "")
    assert "evaluation" not in json.loads((tmp_path / "other.json").read_text())["training"]


def test_the_quality_defaults_nested_figures_are_what_its_card_records(real_idrid: Path) -> None:
    """The shipped trio's card holds the nested figures of its own choice; the command gives them again."""
    card = json.loads((REPO / "models/weights/grader_lite0_lite2_trio.json").read_text())
    stored = card["training"]["evaluation"]["selection_aware"]
    out = subprocess.run(
        [sys.executable, str(REPO / "drwb.py"), "selection-check", *stored["members"],
         "--max-passes", str(stored["max_passes"]), *(["--mirror"] if stored["mirror_view"] else []),
         "--data", str(real_idrid)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    again = json.loads(out.stdout)
    oof = card["training"]["evaluation"]["oof"]
    # the rule's pick on every image is the shipped trio, combined as drwb ensemble combines it
    assert again["selected_on_all"]["members"] == [m["model"] for m in card["extra"]["members"]]
    for key in ("dr_accuracy", "dr_qwk", "dme_accuracy", "joint_accuracy", "referable_auc", "score"):
        assert again["selected_on_all"][key] == pytest.approx(oof[key], abs=1e-9)
        assert again["nested"][key] == pytest.approx(stored["nested"][key], abs=1e-9)
    assert stored["nested"]["score"] < card["training"]["evaluation"]["oof"]["score"]  # chosen on it
