"""`drwb selection-check`: nested cross-validation of choosing the best grader by OOF score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.classifier import NUM_DR
from training.selection import candidates, nested_selection, record_selection

REPO = Path(__file__).resolve().parents[2]


def test_candidates_are_every_combination_within_the_cost() -> None:
    members = ["a", "b", "c"]
    assert len(candidates(members, None, mirror=False)) == 7
    pool = candidates(members, 2, mirror=True)  # three alone, three alone mirrored, three pairs
    assert len(pool) == 9 and (("a", "b"), True) not in pool and (("a",), True) in pool
    assert candidates(members, 3, mirror=False)[-1] == (("a", "b", "c"), False)


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
        result = nested_selection(raw, truth, candidates(list(raw), 1, mirror=True))  # mirrored: 2 passes
        assert result["candidates"] == 12 and len(result["picks"]) == 5
        optimism.append(result["optimism"]["score"])
        nested.append(result["nested"]["score"])
    assert np.mean(optimism) > 0.03
    assert abs(np.mean(nested) - 1 / 6) < 0.04


def test_a_grader_that_knows_is_picked_in_every_fold_and_keeps_its_figures() -> None:
    n = 300
    rng = np.random.default_rng(1)
    truth = {
        "dr_true": rng.integers(0, NUM_DR, n),
        "dme_true": rng.integers(0, 3, n),
        "fold": np.arange(n) % 5,
    }
    good = _noise(n, 7)
    good["logits"][np.arange(n), truth["dr_true"]] += 3.0
    good["logits"][np.arange(n), NUM_DR + truth["dme_true"]] += 3.0
    raw = {"good": good, "noise": _noise(n, 8)}
    result = nested_selection(raw, truth, candidates(list(raw), 1, mirror=False))
    assert set(result["picks"].values()) == {"good"} and result["selected_on_all"]["candidate"] == "good"
    assert result["nested"]["dr_accuracy"] > 0.8 and abs(result["optimism"]["dr_accuracy"]) < 0.02
    with pytest.raises(ValueError, match="no candidate"):
        nested_selection(raw, truth, [])


def test_the_result_is_stored_only_in_the_card_of_the_grader_the_rule_picks(tmp_path: Path) -> None:
    card = {"training": {}, "extra": {"members": [{"model": "a"}, {"model": "members/b"}], "flip": False}}
    (tmp_path / "pair.json").write_text(json.dumps(card))
    (tmp_path / "other.json").write_text(json.dumps({"training": {}, "extra": {}}))
    result = {"selected_on_all": {"candidate": "a + members/b"}, "nested": {"score": 0.8}}
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
    assert (
        again["selected_on_all"]["candidate"]
        == "grader_lite0 + members/grader_lite2_frozen3 + members/grader_lite2_att"
    )
    for key in ("dr_accuracy", "dr_qwk", "dme_accuracy", "score"):
        assert again["nested"][key] == pytest.approx(stored["nested"][key], abs=1e-9)
    assert stored["nested"]["score"] < card["training"]["evaluation"]["oof"]["score"]  # chosen on it
