"""The shipped models as readable tables (Models tab, README): one metric per column, with intervals.

Figures come from the cards only. Graders show out-of-fold (cross-validated) figures when the card has
them, else the single validation split (marked as such: it also chose the best epoch, so it flatters).
A grader whose held-out QWK is below ``WEAK_QWK`` is marked weak wherever it can be chosen, and one whose
attention heads were trained towards lesions says so (its attention maps are not unprompted evidence).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.card import ModelCard
from models.registry import default_model, held_out_fold_key, list_shipped
from workbench.explain.notes import explanation_columns_legend, supervision_note

__all__ = ["WEAK_QWK", "explanations_markdown", "grader_label", "held_out", "models_markdown"]

WEAK_QWK = 0.6


def held_out(card: ModelCard) -> tuple[str, dict[str, Any]]:
    """(where the figures come from, the figures) for a card: OOF, else one held-out fold, else the
    validation split, else the training loop's validation."""
    evaluation = card.training.get("evaluation", {})
    if evaluation.get("oof"):
        oof = evaluation["oof"]
        return f"{oof.get('folds', '?')}-fold out-of-fold, n={oof.get('n')}", oof
    fold = held_out_fold_key(evaluation)
    if fold:
        figures = evaluation[fold]
        return f"fold {fold.removeprefix('held_out_fold_')} held out, n={figures.get('n', '?')}", figures
    if evaluation.get("val"):
        return f"validation split, n={evaluation['val'].get('n', '?')}", evaluation["val"]
    return "training-loop validation", card.training.get("validation", {})


def _cell(metrics: dict[str, Any], key: str, digits: int = 3) -> str:
    value = metrics.get(key)
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    interval = (metrics.get("ci95") or {}).get(key)
    # no-break spaces inside the interval: a narrow column wraps between the figure and its interval only
    return f"{text} [{interval[0]:.{digits}f},\u00a0{interval[1]:.{digits}f}]" if interval else text


def _figure_cell(metrics: dict[str, Any], key: str, digits: int = 3) -> str:
    """``_cell``, or for ``drawn_dice`` the Dice of each lesion type's mask as the apps draw it (one type
    per pixel, at the card's thresholds; ``drwb evaluate --task segmentation``) as "MA / HE / EX / SE"."""
    if key != "drawn_dice":
        return _cell(metrics, key, digits)
    codes = ("MA", "HE", "EX", "SE")
    if not any(f"drawn_dice_{c}" in metrics for c in codes):
        return "n/a"
    return " / ".join(_cell(metrics, f"drawn_dice_{c}", digits) for c in codes)


def _stem(card: ModelCard) -> str:
    return card.weights.removesuffix(".safetensors")


def _family_default_note(arch: str, stem: str, default: str | None) -> str:
    """The note "default", or which profile's default where the profiles differ (the fast profile
    segments with its own model); "" for neither."""
    from workbench.analysis.pipeline import PROFILES  # imported here, as below: the pipeline imports models

    fast = PROFILES["fast"].get(arch) if arch == "segmenter" else None
    if fast is None or fast == default:
        return "default" if stem == default else ""
    if stem == default:
        return "default (quality profile)"
    return "default (fast profile)" if stem == fast else ""


def grader_label(card: ModelCard, default: bool = False) -> str:
    """A grader's name for menus, with "(default)" for the one the analyses use, or "(weak: agrees with the
    graders little, QWK 0.34)" for one below ``WEAK_QWK``."""
    _, metrics = held_out(card)
    qwk = metrics.get("dr_qwk")
    marks = ["default"] if default else []
    if qwk is not None and qwk < WEAK_QWK:
        marks.append(f"weak: agrees with the graders little, QWK {qwk:.2f}")
    return f"{_stem(card)} ({'; '.join(marks)})" if marks else _stem(card)


def models_markdown(folder: Path | None = None) -> str:
    """Markdown: one table per model family (graders, segmenters, localizers, landmark refiners)."""
    cards = list_shipped(folder)
    defaults = {}
    for arch in ("grader", "segmenter", "localizer", "disc", "fovea"):
        try:
            defaults[arch] = default_model(arch, folder)
        except ValueError:
            defaults[arch] = None
    from workbench.analysis.pipeline import PROFILES

    try:  # the fast profile's grader: the best of at most two forward passes a photograph
        fast = default_model("grader", folder, max_passes=PROFILES["fast"]["max_passes"])
    except ValueError:
        fast = None
    out = ["**Graders** (held-out figures; [95% bootstrap interval] where measured)", ""]
    out += [
        "| model | note | backbone | input px | figures from | DR accuracy | DR QWK | DME accuracy |"
        " joint DR+DME | referable AUC | sensitivity / specificity | ECE (DR) | how it works |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for card in (c for c in cards if c.arch == "grader"):
        source, m = held_out(card)
        stem = _stem(card)
        if stem == defaults["grader"]:
            notes = ["default" if stem == fast else "default (quality profile)"]
        else:
            notes = ["default (fast profile)"] if stem == fast else []
        details = []  # sentences, in the last column: they would push the figures off a laptop's screen
        if members := card.extra.get("members"):
            views = ", each on the image and its mirror image" if card.extra.get("flip") else ""
            # members of different input sizes each see the crop at their own (models.ensemble)
            named = (
                m["model"] + (f" at {m['input_size']} px" if m.get("input_size") else "") for m in members
            )
            details.append(
                f"ensemble of {' + '.join(named)}{views}; explained through the member nearest its "
                "probabilities"
            )
        if m.get("dr_qwk") is not None and m["dr_qwk"] < WEAK_QWK:
            notes = [f"**weak** (QWK below {WEAK_QWK})"]
        if supervision_note(card):
            details.append(f"attention maps {supervision_note(card)} (not unprompted evidence)")
        note = "; ".join(notes)
        ece, crossed = ((m.get("ece") or {}).get(k) for k in ("dr_after", "dr_after_cross_fitted"))
        ece_cell = "n/a" if ece is None else f"{ece:.3f}"
        if crossed is not None:  # temperatures fitted on the other folds only (training.oof.cross_fitted_ece)
            ece_cell += f" ({crossed:.3f} cross-fitted)"
        # how much ECE sampling alone gives on this many images (workbench.calibration.ece_if_calibrated)
        if floor := (m.get("ece") or {}).get("dr_after_if_calibrated"):
            details.append(
                f"chance alone gives a perfectly calibrated grader an ECE of about {floor['median']:.3f} on "
                f"these {m.get('n', 'same')} images, and this grader's ECE or more "
                f"{floor['p_value']:.0%} of the time"
                + (" (no clear sign of miscalibration)" if floor["p_value"] >= 0.05 else "")
            )
        # the short note (which profile's default, weak) beside the name, where it is seen
        out.append(
            f"| {_stem(card)} | {note} | {card.encoder.replace('+', ' + ')} | {card.input_size} | {source} | "
            f"{_cell(m, 'dr_accuracy')} | {_cell(m, 'dr_qwk')} | {_cell(m, 'dme_accuracy')} | "
            f"{_cell(m, 'joint_accuracy')} | {_cell(m, 'referable_auc')} | "
            f"{_cell(m, 'referable_sensitivity', 2)} / {_cell(m, 'referable_specificity', 2)} | "
            f"{ece_cell} | {'; '.join(details)} |"
        )
    out += [
        "",
        "ECE (DR): expected calibration error of the DR probabilities after temperature scaling (0 = the "
        "probabilities match how often the grade is right); cross-fitted: each fold's temperature fitted on "
        "the other folds only. What chance alone gives a calibrated grader is shown for graders measured out "
        "of fold.",
    ]
    out += _selection_notes([c for c in cards if c.arch == "grader"])
    families = (
        ("segmenter", "**Lesion segmenters** (AUPR at the original resolution; Dice of the masks as drawn, "
         "one type per pixel at the card's thresholds, which were picked on these images: optimistic)",
         [(f"aupr_{c}", c, 3) for c in ("MA", "HE", "EX", "SE", "OD")]
         + [("jaccard_OD", "OD Jaccard at 0.5", 3), ("drawn_dice", "Dice as drawn MA / HE / EX / SE", 3)]),
        ("localizer", "**Landmark localizers** (centre error, px in a 4288-px-wide photograph)",
         [("od_mean_px", "disc mean", 1), ("od_median_px", "disc median", 1),
          ("fovea_mean_px", "fovea mean", 1), ("fovea_median_px", "fovea median", 1)]),
        ("disc", "**Optic-disc refiners** (the disc segmented again around the detected disc; original px)",
         [("aupr_OD", "OD AUPR", 3), ("jaccard_OD", "OD Jaccard (card threshold)", 3),
          ("jaccard_OD_at_0.5", "OD Jaccard at 0.5", 3)]),
        ("fovea", "**Fovea refiners** (the fovea found again around the localizer's; px in a 4288-px frame)",
         [("refined_mean_px", "fovea mean", 1), ("refined_median_px", "fovea median", 1),
          ("detector_mean_px", "localizer alone, mean", 1)]),
    )  # fmt: skip
    for arch, title, columns in families:
        if not any(c.arch == arch for c in cards):
            continue  # a family with nothing shipped (the fovea refiner, measured worse) gets no table
        out += ["", title, "", "| model | figures from | " + " | ".join(c[1] for c in columns) + " | note |"]
        out.append("|" + "---|" * (len(columns) + 3))
        for card in (c for c in cards if c.arch == arch):
            source, m = held_out(card)
            if arch == "segmenter" and m.get("crop_px"):  # the crop the figures were measured at
                source += f", {m['crop_px']}-px crop"
            cells = " | ".join(_figure_cell(m, key, digits) for key, _, digits in columns)
            fast_figures = card.training.get("evaluation", {}).get("val_fast")
            notes = [_family_default_note(arch, _stem(card), defaults[arch])]
            if notes[0] == "default (fast profile)" and fast_figures:  # this row is not what it shows
                notes[0] += ", whose figures are the fast-profile row below"
            notes = [n for n in notes if n]
            for entry in card.extra.get("channels_from", []):  # channels taken from another model
                size = f" at {entry['input_size']} px" if entry.get("input_size") else ""
                averaged = set(entry.get("averaged", []))  # averaged with this model's own channel
                taken = [c for c in entry["channels"] if c not in averaged]
                parts = [f"{', '.join(taken)} from {entry['model']}{size}"] if taken else []
                if averaged:
                    parts.append(
                        f"{', '.join(sorted(averaged))}: the mean of its own and {entry['model']}'s{size}"
                    )
                notes.append("; ".join(parts))
            out.append(f"| {_stem(card)} | {source} | {cells} | {'; '.join(notes)} |")
            if arch == "segmenter" and fast_figures:  # what the Analyze tab shows in the fast profile
                cells = " | ".join(_figure_cell(fast_figures, key, digits) for key, _, digits in columns)
                crop, n = PROFILES["fast"]["segment_size"], fast_figures.get("n", "?")
                out.append(
                    f"| {_stem(card)}, fast profile | validation split, n={n}, {crop}-px crop in one tile | "
                    f"{cells} | the figures the fast profile shows beside counts |"
                )
    out += ["", *explanations_markdown([c for c in cards if c.arch == "grader"])]
    out += ["", "Reproduce each model with the command in its card (`training.command`); see the README."]
    return "\n".join(out)


def _selection_notes(graders: list[ModelCard]) -> list[str]:
    """Lines under the grader table: for each grader chosen by OOF score whose card measured that choice
    (``training.selection``, ``drwb selection-check --write-card``), what the choice delivers."""
    lines = []
    for card in graders:
        check = card.training.get("evaluation", {}).get("selection_aware")
        if not check:
            continue
        nested = check["nested"]
        figures = ", ".join(
            f"{label} {_cell(nested, key)}"
            for key, label in (
                ("dr_accuracy", "DR accuracy"),
                ("dr_qwk", "QWK"),
                ("dme_accuracy", "DME accuracy"),
                ("joint_accuracy", "joint"),
            )
        )
        picks = list((check.get("picks") or {}).values())
        others = f"other {len(picks) - 1} folds" if picks else "other folds"
        chosen = check["selected_on_all"]["candidate"]
        held = f"; {_stem(card)} itself in {picks.count(chosen)} of {len(picks)} folds" if picks else ""
        largest = min(len(check["members"]), check.get("max_passes") or len(check["members"]))
        lines.append(
            f"- {_stem(card)} was chosen by out-of-fold (OOF) score among {check['candidates']} candidates "
            f"(1-{largest} networks from a pool of {len(check['members'])}), so its own OOF figures include "
            "the luck of being the best of them. Choosing that way, measured by nested cross-validation "
            f"(each fold graded by the candidate that scored best on the {others}{held}): {figures}; score "
            f"{nested['score']:.3f} against its own {check['selected_on_all']['score']:.3f}."
        )
    return (
        [
            "",
            "**How much of a default's figures is the luck of being chosen** (score = (DR QWK + DME accuracy)"
            " / 2, what the defaults are chosen by)",
            "",
            *lines,
        ]
        if lines
        else []
    )


_EXPLAIN_COLUMNS = (
    ("pointing_game", "pointing game"),
    ("relevance_mass", "relevance mass"),
    ("insertion_auc", "insertion AUC"),
    ("deletion_auc", "deletion AUC"),
)


def _mean_ci(stats: dict[str, Any], key: str) -> str:
    cell = stats.get(key) or {}
    if cell.get("mean") is None:
        return "n/a"
    return f"{cell['mean']:.2f} ± {cell['ci95']:.2f}"


def explanations_markdown(graders: list[ModelCard]) -> list[str]:
    """Lines: each grader's ``drwb explain-bench --write-card`` rows (segmentation photographs it never
    trained on), or why it has none."""
    out = [
        "**Explanation quality per grader** (`drwb explain-bench --split val --write-card`: IDRiD "
        "segmentation photographs the grader never trained on, its predicted grade as target; "
        "mean ± 95% CI; a handful of photographs, so the intervals are wide)",
        "",
        "| grader | images | method | "
        + " | ".join(t for _, t in _EXPLAIN_COLUMNS)
        + " | randomisation rho |",
        "|" + "---|" * (len(_EXPLAIN_COLUMNS) + 4),
    ]
    unmeasured = []  # graders without rows, each with why: listed under the table, not in its columns
    for card in graders:
        evaluation = card.training.get("evaluation", {})
        bench = evaluation.get("explain_bench_val")
        if not bench:
            config = card.training.get("config") or {}
            if members := card.extra.get("members"):
                names = ", ".join(m["model"] for m in members)
                why = f"explained through one member per photograph ({names}); the bench scores one network"
            elif config.get("refit") and config.get("unlabelled"):
                why = "none left: trained on every IDRiD segmentation photograph"
            else:
                why = "not measured"
            unmeasured.append(f"- {_stem(card)}: {why}")
            continue
        for method, stats in bench["methods"].items():
            label = (
                f"{method} ({supervision_note(card)})"
                if method == "attention" and supervision_note(card)
                else method
            )
            rho = (stats.get("randomisation_spearman") or {}).get("mean")
            sanity = (
                "n/a"
                if rho is None
                else f"{rho:.2f}" + (" (fails)" if stats.get("fails_sanity_check") else "")
            )
            cells = " | ".join(_mean_ci(stats, key) for key, _ in _EXPLAIN_COLUMNS)
            out.append(f"| {_stem(card)} | {bench['images']} | {label} | {cells} | {sanity} |")
    legend = ["", explanation_columns_legend(tuple(t for _, t in _EXPLAIN_COLUMNS))] if len(out) > 4 else []
    return out + legend + (["", "No rows:", *unmeasured] if unmeasured else [])
