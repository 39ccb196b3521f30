"""The Models tab table: one metric per column, intervals, OOF preferred, weak graders marked."""

from __future__ import annotations

import json
from pathlib import Path

from models.card import ModelCard
from models.registry import forward_passes
from tests.conftest import write_tiny_weights
from workbench.model_table import grader_label, models_markdown


def test_models_table_columns_intervals_and_weak_marking(tmp_path: Path) -> None:
    folder = write_tiny_weights(tmp_path)
    card_path = folder / "tiny_grader.json"
    card = json.loads(card_path.read_text())
    card["training"]["evaluation"] = {
        "oof": {
            "n": 413,
            "folds": 5,
            "dr_accuracy": 0.71,
            "dr_qwk": 0.86,
            "score": 0.9,
            "ci95": {"dr_accuracy": [0.66, 0.75]},
            "ece": {
                "dr_after": 0.03,
                "dr_after_cross_fitted": 0.041,
                "dr_after_if_calibrated": {"median": 0.038, "p95": 0.06, "p_value": 0.71},
            },
        }
    }
    card_path.write_text(json.dumps(card))
    weak = dict(card, weights="weak.safetensors")
    weak["training"] = {"evaluation": {"val": {"n": 83, "dr_qwk": 0.34, "dr_accuracy": 0.35}}}
    (folder / "weak.json").write_text(json.dumps(weak))
    (folder / "weak.safetensors").write_bytes((folder / "tiny_grader.safetensors").read_bytes())
    table = models_markdown(folder)
    header = next(line for line in table.splitlines() if line.startswith("| model | note | backbone"))
    assert [c.strip() for c in header.strip("|").split("|")][:2] == ["model", "note"]  # seen first
    assert [c.strip() for c in header.strip("|").split("|")][5:7] == ["DR accuracy", "DR QWK"]
    assert [c.strip() for c in header.strip("|").split("|")][-1] == "how it works"  # the long sentences last
    row = next(line for line in table.splitlines() if line.startswith("| tiny_grader"))
    assert (
        "5-fold out-of-fold, n=413" in row and "0.710 [0.660,\u00a00.750]" in row
    )  # an interval never breaks and "default" in row
    assert "0.030 (0.041 cross-fitted)" in row  # ECE after temperature scaling, in-sample and cross-fitted
    # the ECE sampling alone gives on 413 images, in the sentences column (the figures stay narrow)
    assert row.rstrip(" |").endswith(
        "chance alone gives a perfectly calibrated grader an ECE of about 0.038 on these 413 images, and "
        "this grader's ECE or more 71% of the time (no clear sign of miscalibration)"
    )
    weak_row = next(line for line in table.splitlines() if line.startswith("| weak"))
    assert "**weak**" in weak_row and "validation split, n=83" in weak_row
    from models.card import ModelCard

    weak = ModelCard.read(folder / "weak.json")
    assert grader_label(weak) == "weak (weak: agrees with the graders little, QWK 0.34)"
    marked = "weak (default; weak: agrees with the graders little, QWK 0.34)"
    assert grader_label(weak, default=True) == marked  # weak says so even as the default


def test_models_table_names_the_channels_a_segmenter_takes_from_another(tmp_path: Path) -> None:
    folder = write_tiny_weights(tmp_path)
    card_path = folder / "tiny_segmenter.json"
    card = json.loads(card_path.read_text())
    entry = {"model": "segmenter_lite0", "input_size": 640, "channels": ["HE", "OD"]}
    card["extra"]["channels_from"] = [entry]
    card_path.write_text(json.dumps(card))
    row = next(line for line in models_markdown(folder).splitlines() if line.startswith("| tiny_segmenter"))
    assert "HE, OD from segmenter_lite0 at 640 px" in row


def test_models_table_shows_the_fast_profiles_segmenter_figures_beside_its_own(tmp_path: Path) -> None:
    """A segmenter measured also as the fast profile runs it (``evaluation.val_fast``) gets a second row
    with those figures: the ones the apps show beside counts in that profile."""
    folder = write_tiny_weights(tmp_path)
    card_path = folder / "tiny_segmenter.json"
    card = json.loads(card_path.read_text())
    card["training"]["evaluation"] = {
        "val": {"aupr_EX": 0.536, "n": 11},
        "val_fast": {"aupr_EX": 0.398, "n": 11},
    }
    card_path.write_text(json.dumps(card))
    rows = [line for line in models_markdown(folder).splitlines() if line.startswith("| tiny_segmenter")]
    assert len(rows) == 2 and "0.536" in rows[0] and "0.398" not in rows[0]
    assert (
        rows[1].startswith("| tiny_segmenter, fast profile |") and "0.398" in rows[1] and "640-px" in rows[1]
    )


def test_models_table_shows_the_dice_of_the_masks_as_drawn_per_profile(tmp_path: Path) -> None:
    """``drwb evaluate --task segmentation`` measures the masks the apps draw (one type per pixel); the
    table shows them per profile row, and "n/a" for a card measured before that existed."""
    folder = write_tiny_weights(tmp_path)
    card_path = folder / "tiny_segmenter.json"
    card = json.loads(card_path.read_text())
    drawn = {"drawn_dice_MA": 0.44, "drawn_dice_HE": 0.455, "drawn_dice_EX": 0.678, "drawn_dice_SE": 0.657}
    card["training"]["evaluation"] = {"val": {"aupr_EX": 0.7, "n": 11, **drawn}, "val_fast": {"n": 11}}
    card_path.write_text(json.dumps(card))
    table = models_markdown(folder).splitlines()
    header = next(line for line in table if line.startswith("| model | figures from | MA"))
    assert "Dice as drawn MA / HE / EX / SE" in header
    rows = [line for line in table if line.startswith("| tiny_segmenter")]
    assert "0.440 / 0.455 / 0.678 / 0.657" in rows[0]
    assert rows[1].split("|")[-3].strip() == "n/a"  # the fast row: no drawn figures in its card


def test_models_table_says_which_profile_each_default_segmenter_serves() -> None:
    """The quality and fast profiles segment with different shipped models: each row says whose default
    it is (a bare "default" on the 2048-px model read as if the fast profile used it too)."""
    rows = {
        line.split(" | ")[0].removeprefix("| "): line
        for line in models_markdown().splitlines()
        if line.startswith("| segmenter_lite0")
    }
    # the fast profile's model is measured at two crops: its own row points at the one the profile uses
    assert rows["segmenter_lite0"].endswith(
        "| default (fast profile), whose figures are the fast-profile row below |"
    )
    assert (
        "1024-px crop" in rows["segmenter_lite0"] and "640-px crop" in rows["segmenter_lite0, fast profile"]
    )
    assert "| default (quality profile)" in rows["segmenter_lite0_hr"]
    # a channel averaged with another model's is not called taken from it
    assert (
        "OD from segmenter_lite0 at 640 px; HE: the mean of its own and segmenter_lite0's at 640 px"
        in rows["segmenter_lite0_hr"]
    )


def test_models_table_shows_each_graders_explanation_rows_or_why_there_are_none(tmp_path: Path) -> None:
    folder = write_tiny_weights(tmp_path)
    card_path = folder / "tiny_grader.json"
    card = json.loads(card_path.read_text())
    row = {"mean": 0.5, "ci95": 0.2, "n": 6}
    rho_low, rho_high = {"mean": 0.2, "ci95": 0.1, "n": 2}, {"mean": 0.7, "ci95": 0.1, "n": 2}
    card["training"]["evaluation"] = {
        "explain_bench_val": {
            "images": 6,
            "methods": {
                "attention": {"pointing_game": row, "relevance_mass": {"mean": 0.04, "ci95": 0.01, "n": 6},
                              "randomisation_spearman": rho_low,
                              "fails_sanity_check": False},
                "gradcam": {"pointing_game": row, "randomisation_spearman": rho_high,
                            "fails_sanity_check": True},
            },
        }
    }  # fmt: skip
    card["training"]["recipe"] = {"attention_supervision": {"weight": 0.5}}
    card_path.write_text(json.dumps(card))
    refit = dict(card, weights="refit.safetensors")
    refit["training"] = {"config": {"refit": True, "unlabelled": True}}
    (folder / "refit.json").write_text(json.dumps(refit))
    (folder / "refit.safetensors").write_bytes((folder / "tiny_grader.safetensors").read_bytes())
    lines = models_markdown(folder).splitlines()
    attention = next(line for line in lines if line.startswith("| tiny_grader | 6 | attention"))
    assert "(lesion-supervised)" in attention and "0.50 ± 0.20" in attention and "0.04 ± 0.01" in attention
    gradcam = next(line for line in lines if line.startswith("| tiny_grader | 6 | gradcam"))
    assert "0.70 (fails)" in gradcam and "n/a" in gradcam  # no relevance mass recorded
    start = next(i for i, line in enumerate(lines) if line.startswith("**Explanation quality"))
    section = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        section.append(line)
    assert len(section) == 4 and {row.count("|") for row in section} == {9}  # 8 cells in every row
    # every column, "(fails)" included, is explained under the table
    first = next(i for i, line in enumerate(lines) if i > start and line.startswith("Columns "))
    legend = "\n".join(lines[first : first + 6])  # one column a line
    for column in ("pointing game", "relevance mass", "insertion AUC", "deletion AUC", "randomisation rho"):
        assert f"**{column}**" in legend
    assert "above 0.5" in legend and "*fails*" in legend and "within 25 px" in legend
    # a grader without rows says why under the table, not in its columns
    assert "- refit: none left: trained on every IDRiD segmentation photograph" in lines[start:]


def test_models_table_shows_shipped_refiners_and_skips_families_with_none(tmp_path: Path) -> None:
    folder = write_tiny_weights(tmp_path)
    card_path = folder / "tiny_disc.json"
    card = json.loads(card_path.read_text())
    card["training"]["evaluation"] = {"val": {"n": 11, "jaccard_OD": 0.882, "jaccard_OD_at_0.5": 0.879}}
    card_path.write_text(json.dumps(card))
    for suffix in (".json", ".safetensors"):
        (folder / f"tiny_fovea{suffix}").unlink()
    table = models_markdown(folder)
    row = next(line for line in table.splitlines() if line.startswith("| tiny_disc"))
    assert "validation split, n=11" in row and "0.882" in row and "0.879" in row and "default" in row
    assert "Optic-disc refiners" in table and "Fovea refiners" not in table


def test_models_table_marks_each_profiles_default_grader_and_names_an_ensembles_members(
    tmp_path: Path,
) -> None:
    """Quality: the best grader at any cost. Fast: the best of at most two forward passes a photograph
    (``models.registry.forward_passes``), so a two-network ensemble without the mirror view (2 passes)
    outranks one network, and the same pair with the mirror view (4 passes) is never the fast default."""
    folder = write_tiny_weights(tmp_path)
    single = json.loads((folder / "tiny_grader.json").read_text())
    single["training"]["evaluation"] = {"oof": {"n": 413, "folds": 5, "dr_accuracy": 0.67, "score": 0.85}}
    (folder / "tiny_grader.json").write_text(json.dumps(single))
    members = [{"model": "tiny_grader", "sha256": single["sha256"]}] * 2
    for stem, flip, score in (("tiny_ens", True, 0.88), ("tiny_pair", False, 0.87)):
        ensemble = dict(single, name=stem, weights=f"{stem}.safetensors")
        ensemble["extra"] = {"members": members, "flip": flip}
        if not flip:  # members of different input sizes: each size is named
            ensemble["extra"]["members"] = [
                dict(m, input_size=size) for m, size in zip(members, (64, 80), strict=True)
            ]
        ensemble["training"] = {
            "evaluation": {"oof": {"n": 413, "folds": 5, "dr_accuracy": 0.7, "score": score}}
        }
        (folder / f"{stem}.json").write_text(json.dumps(ensemble))
    assert [forward_passes(ModelCard.read(folder / f"{s}.json")) for s in ("tiny_ens", "tiny_pair")] == [4, 2]
    lines = models_markdown(folder).splitlines()

    def row(stem: str) -> str:
        return next(line for line in lines if line.startswith(f"| {stem} |") and "out-of-fold" in line)

    assert "default (quality profile)" in row("tiny_ens") and "ensemble of tiny_grader" in row("tiny_ens")
    assert "mirror image" in row("tiny_ens") and "mirror image" not in row("tiny_pair")
    assert "tiny_grader at 64 px + tiny_grader at 80 px" in row("tiny_pair") and " px" not in row("tiny_ens")
    assert "default (fast profile)" in row("tiny_pair") and "default" not in row("tiny_grader")
    assert any(line.startswith("- tiny_ens: explained through one member") for line in lines)
    (folder / "tiny_pair.json").unlink()  # without the pair, one network is the fast profile's best
    lines = models_markdown(folder).splitlines()
    assert "default (fast profile)" in row("tiny_grader") and "ensemble" not in row("tiny_grader")


def test_models_table_says_how_much_of_a_defaults_figures_is_the_luck_of_being_chosen(tmp_path: Path) -> None:
    folder = write_tiny_weights(tmp_path)
    card_path = folder / "tiny_grader.json"
    card = json.loads(card_path.read_text())
    nested = {"dr_accuracy": 0.70, "dr_qwk": 0.877, "dme_accuracy": 0.869, "joint_accuracy": 0.63,
              "score": 0.873, "ci95": {"dr_accuracy": [0.654, 0.743]}}  # fmt: skip
    card["training"]["evaluation"] = {
        "oof": {"n": 413, "folds": 5, "dr_accuracy": 0.705, "score": 0.882},
        "selection_aware": {"candidates": 25, "members": ["a", "b", "c", "d"], "nested": nested,
                            "selected_on_all": {"score": 0.8817, "candidate": "a + b"},
                            "picks": dict.fromkeys("01234", "a + b"), "max_passes": 4},
    }  # fmt: skip
    card_path.write_text(json.dumps(card))
    lines = models_markdown(folder).splitlines()
    note = next(line for line in lines if line.startswith("- tiny_grader was chosen by out-of-fold (OOF)"))
    assert (
        "among 25 candidates (1-4 networks from a pool of 4)" in note
        and "itself in 5 of 5 folds" in note
        and "DR accuracy 0.700 [0.654,\u00a00.743]" in note
    )
    assert "scored best on the other 4 folds" in note and "score 0.873 against its own 0.882" in note
    plain = json.loads(card_path.read_text())
    del plain["training"]["evaluation"]["selection_aware"]
    card_path.write_text(json.dumps(plain))
    assert "luck of being chosen" not in models_markdown(folder)  # nothing measured, nothing said
