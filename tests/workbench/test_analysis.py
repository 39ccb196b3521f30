"""Workbench.analyze on the tiny registered models: structure, frames, ungradeable images, threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from models.constants import LESION_CODES
from workbench.io.image_io import LoadedImage
from workbench.io.synthetic import make_fundus
from workbench.reports.render import (
    curves_figure,
    landmarks_overlay,
    lesion_overlay,
    method_grid,
    probability_figure,
)
from workbench.targets import ReferableTarget


def _loaded(image: np.ndarray) -> LoadedImage:
    return LoadedImage(image, image.shape[:2], "PNG", "RGB", "synthetic.png")


def test_analysis_structure(tiny_workbench, synthetic_fundus) -> None:
    analysis = tiny_workbench.analyze(_loaded(synthetic_fundus.image), explain=["gradcam", "attention"])
    assert analysis.graded and analysis.quality.gradeable
    assert analysis.dr_probabilities.shape == (5,) and np.isclose(
        analysis.dr_probabilities.sum(), 1, atol=1e-5
    )
    assert analysis.dme_probabilities.shape == (3,)
    assert analysis.referable == (analysis.referable_probability >= 0.5)
    assert set(analysis.lesions) == set(LESION_CODES)
    height, width = synthetic_fundus.image.shape[:2]
    for x, y in (analysis.od_xy, analysis.fovea_xy):
        assert -0.5 * width < x < 1.5 * width and -0.5 * height < y < 1.5 * height
    if analysis.fovea_doubt is None:
        assert analysis.etdrs is not None and analysis.dme_check is not None
    else:  # a doubtful fovea (likely with the tiny random localizer) places nothing derived from it
        assert analysis.etdrs is None and analysis.dme_check is None and analysis.lesions_by_region == {}
    assert analysis.lesions["OD"].count <= 1  # at most one optic disc
    assert set(analysis.heatmaps) == {"gradcam", "attention"}
    assert {"load", "quality", "grading", "lesions", "landmarks", "explanations"} <= set(analysis.timings_ms)


def test_ungradeable_image_is_not_graded(tiny_workbench) -> None:
    analysis = tiny_workbench.analyze(_loaded(np.zeros((300, 400, 3), np.uint8)))
    assert not analysis.graded and analysis.dr_probabilities is None
    assert any("no fundus field" in reason for reason in analysis.quality.reasons)
    from workbench.ui.summary import FORCE_LABEL, summary_markdown

    summary = summary_markdown(analysis)
    assert summary.startswith("## Not gradeable") and f"tick **{FORCE_LABEL}**" in summary  # the way out
    forced = tiny_workbench.analyze(_loaded(np.zeros((300, 400, 3), np.uint8)), force=True)
    assert forced.graded


def test_a_grade_given_on_request_is_headed_by_why_it_may_mean_nothing(tiny_workbench) -> None:
    """A forced grade never headlines alone: the summary and the HTML report open with the failed check,
    harder when the picture is not a fundus at all; a gradeable photograph's headline is the grade."""
    from workbench.io.synthetic import make_fundus
    from workbench.reports.html_page import report_html
    from workbench.reports.report import analysis_to_dict
    from workbench.ui.summary import summary_markdown

    holiday = np.zeros((300, 400, 3), np.uint8)
    holiday[:] = (120, 170, 230)  # blue sky: no field, not fundus colours
    forced = tiny_workbench.analyze(_loaded(holiday), force=True)
    headline = summary_markdown(forced).split("\n\n")
    assert headline[0].startswith("## NOT A FUNDUS PHOTOGRAPH?") and "not a finding" in headline[0]
    assert headline[1].startswith("### DR grade")
    page = report_html(analysis_to_dict(forced), {})
    assert "NOT A FUNDUS PHOTOGRAPH?" in page.split("id='headline'>")[1].split("<br>")[0]
    blurred = cv2.GaussianBlur(make_fundus(seed=3).image, (0, 0), 8)  # a fundus, out of focus
    forced_blurred = tiny_workbench.analyze(_loaded(blurred), force=True)
    assert summary_markdown(forced_blurred).startswith("## NOT GRADEABLE (out of focus")
    plain = tiny_workbench.analyze(_loaded(make_fundus(seed=3).image))
    assert plain.quality.gradeable and summary_markdown(plain).startswith("## DR grade")


def test_a_grade_and_a_referral_that_disagree_are_explained(tiny_workbench) -> None:
    """The grade is the most likely of five; referral sums grades 2-4. A flat distribution can show
    "No DR" beside "REFERABLE": the summary and the HTML report then say why, right under the grade."""
    import dataclasses

    from workbench.analysis.result import referral_note
    from workbench.io.synthetic import make_fundus
    from workbench.reports.html_page import report_html
    from workbench.reports.report import analysis_to_dict
    from workbench.ui.summary import summary_markdown

    assert referral_note(0, 0.53) is not None and "grades 2-4 together" in referral_note(0, 0.53)
    assert "grades 0-1 together are more likely (0.55)" in referral_note(2, 0.45)
    assert referral_note(0, 0.2) is None and referral_note(3, 0.9) is None
    analysis = tiny_workbench.analyze(_loaded(make_fundus(seed=3).image))
    flat = dataclasses.replace(analysis, dr_probabilities=np.array([0.33, 0.14, 0.2, 0.2, 0.13]))
    lines = summary_markdown(flat).split("\n\n")
    assert "No DR" in lines[0] and "REFERABLE" in lines[0]
    assert lines[1].startswith("**Grade and referral:** Grade 0 is the single most likely")
    assert "referred on that sum" in report_html(analysis_to_dict(flat), {})
    sure = dataclasses.replace(analysis, dr_probabilities=np.array([0.9, 0.05, 0.03, 0.01, 0.01]))
    assert "Grade and referral" not in summary_markdown(sure)
    # a most likely grade below 0.6 is shown with the runner-up, in the summary and the report
    assert "Uncertain grade" not in summary_markdown(sure)
    torn = dataclasses.replace(analysis, dr_probabilities=np.array([0.02, 0.02, 0.37, 0.05, 0.54]))
    line = next(x for x in summary_markdown(torn).split("\n\n") if x.startswith("**Uncertain grade:**"))
    assert "grade 4 (0.54) or grade 2 (0.37)" in line and "no grade reaches 0.6" in line
    assert "Uncertain grade: grade 4 (0.54) or grade 2 (0.37)" in report_html(analysis_to_dict(torn), {})


def test_concurrent_analyses(tiny_workbench) -> None:
    images = [_loaded(make_fundus(seed, size=(356, 536)).image) for seed in range(4)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda im: tiny_workbench.analyze(im, explain=["gradcam"]), images))
    sequential = [tiny_workbench.analyze(im) for im in images]
    for a, b in zip(results, sequential, strict=True):
        assert np.allclose(a.dr_probabilities, b.dr_probabilities, atol=1e-5)


def test_explanations_are_not_disturbed_by_other_sessions_forward_passes(tiny_workbench) -> None:
    """Grad-CAM hooks the shared grader; another session grading at the same time must neither fire
    those hooks (a wrong map, or an inference-mode error) nor be refused: both wait on the model's lock."""
    import threading

    from workbench.targets import GradeTarget

    crop = tiny_workbench.analyze(_loaded(make_fundus(5, size=(356, 536)).image)).crop
    reference = tiny_workbench.explain(crop, ["gradcam"], GradeTarget(2))["gradcam"].values
    others = [_loaded(make_fundus(seed, size=(356, 536)).image) for seed in range(6, 9)]
    stop, errors = threading.Event(), []

    def grade_meanwhile() -> None:
        try:
            while not stop.is_set():
                for image in others:
                    tiny_workbench.grader.predict([tiny_workbench.analyze(image).crop])
        except Exception as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    worker = threading.Thread(target=grade_meanwhile)
    worker.start()
    try:
        maps = [tiny_workbench.explain(crop, ["gradcam"], GradeTarget(2))["gradcam"].values for _ in range(8)]
    finally:
        stop.set()
        worker.join()
    assert not errors, errors
    for values in maps:
        np.testing.assert_allclose(values, reference, atol=1e-5)


def _assert_legends(analysis) -> None:
    """Each overlay carries its key in the lower-left corner: a swatch of exactly each colour it uses."""
    from models.constants import LESIONS
    from workbench.reports.render import DISC_COLOUR, DOUBT_COLOUR, FOVEA_COLOUR

    def swatches(image: np.ndarray) -> np.ndarray:
        corner = image[-image.shape[0] // 3 :, : image.shape[1] // 25]  # the swatch column of the key
        return corner.reshape(-1, 3)

    def has(image: np.ndarray, colour) -> bool:
        return bool((swatches(image) == np.array(colour)).all(1).sum() >= 20)

    from workbench.reports.render import UNRELIABLE_COLOUR

    def key_colour(lesion) -> tuple:  # a type below the reliability floor is keyed (and drawn) grey
        trust = analysis.lesion_reliability.get(lesion.code)
        return UNRELIABLE_COLOUR if lesion.code != "OD" and trust and not trust.reliable else lesion.colour

    lesions = lesion_overlay(analysis)
    shown = [lesion for lesion in LESIONS if lesion.code in analysis.lesions]
    assert shown and all(has(lesions, key_colour(lesion)) for lesion in shown)
    marks = landmarks_overlay(analysis)
    fovea = DOUBT_COLOUR if analysis.fovea_doubt is not None else FOVEA_COLOUR
    assert has(marks, DISC_COLOUR) and has(marks, fovea)
    assert not has(analysis.crop, DISC_COLOUR)  # the check itself can fail


def test_render_functions(tiny_workbench, synthetic_fundus) -> None:
    analysis = tiny_workbench.analyze(
        _loaded(synthetic_fundus.image), explain=["gradcam", "saliency"], target=ReferableTarget()
    )
    for image in (
        lesion_overlay(analysis),
        landmarks_overlay(analysis),
        method_grid(analysis.crop, analysis.heatmaps),
    ):
        assert image.dtype == np.uint8 and image.ndim == 3
    assert len(probability_figure(analysis).data) == 2
    _assert_legends(analysis)
    from workbench.reports.batch import score_analysis

    scores = score_analysis(tiny_workbench, analysis, ReferableTarget())
    assert set(scores) == {"gradcam", "saliency"}
    assert 0 <= scores["gradcam"].deletion_auc <= 1
    traces = curves_figure({k: s.curves for k, s in scores.items()}).data
    assert len(traces) == 4
    colours = [trace.line.color for trace in traces]
    assert colours[0] == colours[1] != colours[2] == colours[3]  # one colour per method, both curves


def test_profiles_choose_the_segmentation_crop(tiny_weights, synthetic_fundus, monkeypatch) -> None:
    from workbench.analysis import FAST_SEGMENT_SIZE, Workbench, profile_from_env

    fast = Workbench(weights_dir=tiny_weights, profile="fast")
    assert fast.segmenter.input_size == fast.segmenter.tile == FAST_SEGMENT_SIZE
    analysis = fast.analyze(_loaded(synthetic_fundus.image))
    assert analysis.lesions["EX"].mask.shape == (FAST_SEGMENT_SIZE, FAST_SEGMENT_SIZE)
    # the profile that ran is said where the models are, and in report.json
    from workbench.reports.report import analysis_to_dict
    from workbench.ui.summary import summary_markdown

    assert "Profile: fast. Models:" in summary_markdown(analysis)
    assert analysis_to_dict(analysis)["profile"] == "fast"
    # the HTML report says what produced it (software, when, profile, each model and its runtime), and its
    # landmarks and areas as the apps give them: two-decimal confidences, whole pixels
    from workbench.reports.html_page import report_html

    data = analysis_to_dict(analysis)
    page = report_html(data, {})
    provenance = page.split("id='provenance'>")[1]
    assert data["software"].startswith("dr-workbench ") and data["software"] in provenance
    assert "profile fast" in provenance and f"grader {analysis.models['grader']}" in provenance
    assert f"<td>{data['fovea']['confidence']:.2f} (detector)</td>" in page
    assert f"<td>{round(data['optic_disc']['xy'][0])}</td>" in page
    area = round(data["lesions"]["EX"]["area_px"])
    assert "<td>focus</td>" in page and "<td>&gt;= 5</td>" in page  # each quality measure with its limit
    assert f"<td>Hard exudates (EX)</td><td>{data['lesions']['EX']['count']}</td><td>{area}</td>" in page
    quality = Workbench(weights_dir=tiny_weights)
    assert quality.segmenter.input_size == quality.segmenter.card.input_size
    with pytest.raises(ValueError, match="quality, fast"):
        Workbench(weights_dir=tiny_weights, profile="turbo")
    monkeypatch.setenv("DRWB_PROFILE", "turbo")
    with pytest.raises(ValueError, match="valid profiles are quality, fast"):
        profile_from_env()
    monkeypatch.setenv("DRWB_PROFILE", "fast")
    assert profile_from_env() == "fast"


def test_segmentation_decodes_a_jpeg_as_the_segmenters_training_cache_did(
    tiny_weights, synthetic_fundus, monkeypatch, tmp_path
) -> None:
    """At the card's input size, not the crop's: the fast profile's 640-px crop from a 1/4-scale decode
    lost haemorrhage AUPR, the 1024-px crop from a full-size decode too."""
    import json
    import shutil

    import cv2

    from workbench.analysis import Workbench, pipeline

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    card_path = weights / "tiny_segmenter.json"
    card = json.loads(card_path.read_text())
    card["input_size"] = 1024  # as segmenter_lite0's, whose training cache decoded photographs at 1024
    card_path.write_text(json.dumps(card))
    big = cv2.resize(synthetic_fundus.image, (4288, 2848), interpolation=cv2.INTER_LINEAR)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    assert ok
    decoded = []
    real_load = pipeline.load_image

    def spy(*args, **kwargs):
        image = real_load(*args, **kwargs)
        decoded.append(image.rgb.shape[:2])
        return image

    monkeypatch.setattr(pipeline, "load_image", spy)
    fast = Workbench(weights_dir=weights, segmenter="tiny_segmenter", profile="fast")
    assert fast.segmenter.input_size == 640
    fast.analyze(jpeg.tobytes(), name="big.jpg")
    assert decoded[-1] == (1424, 2144)  # 1/2 scale, as the cache; not 1/4 (712 px, the crop's own size)
    Workbench(weights_dir=weights, segmenter="tiny_segmenter").analyze(jpeg.tobytes(), name="big.jpg")
    assert decoded[-1] == (1424, 2144)  # its own 1024-px crop: the same decode, not full size


def test_lesion_reliability_from_the_card() -> None:
    from workbench.analysis.lesion_trust import RELIABILITY_FLOOR, lesion_reliability, segmenter_figures

    training = {"evaluation": {"val": {"aupr_MA": 0.01, "aupr_EX": 0.54, "aupr_HE": RELIABILITY_FLOOR}}}
    table = lesion_reliability(segmenter_figures(training))
    assert not table["MA"].reliable and "0.01 < 0.30" in table["MA"].note
    assert table["EX"].reliable and table["EX"].aupr == pytest.approx(0.54)
    assert table["HE"].reliable  # at the floor counts as reliable
    assert not table["SE"].reliable and "no validated AUPR" in table["SE"].note
    # the fast profile reads its own measurement (smaller crop) when the card has one
    training["evaluation"]["val_fast"] = {"aupr_MA": 0.005}
    assert segmenter_figures(training, "fast") == {"aupr_MA": 0.005}
    assert segmenter_figures(training, "quality")["aupr_EX"] == 0.54
    # a photograph that failed the quality check, analysed on request: no type is reliable there
    forced = lesion_reliability(segmenter_figures(training), gradeable=False)
    assert not any(r.reliable for r in forced.values()) and "quality check" in forced["EX"].note
    assert forced["EX"].aupr == pytest.approx(0.54)  # the card's figure is still shown


def test_a_segmenter_card_can_take_channels_from_another_model(
    tiny_weights, synthetic_fundus, tmp_path
) -> None:
    """``extra.channels_from`` (``drwb train --channels-from``): those channels come from the other model at
    its size, resized onto this model's crop; the others are this model's own."""
    import shutil

    from models.card import ModelCard
    from training.export import parse_channels_from
    from workbench.predictors import load_segmenter

    for path in tiny_weights.glob("tiny_segmenter.*"):
        shutil.copy(path, tmp_path / path.name)
    card = ModelCard.read(tmp_path / "tiny_segmenter.json")
    entries = parse_channels_from("tiny_segmenter@64:HE,OD")
    assert entries == [{"model": "tiny_segmenter", "input_size": 64, "channels": ["HE", "OD"]}]
    composite = card.with_updates(extra={**card.extra, "channels_from": entries})
    (tmp_path / "composite.json").write_text(composite.to_json())
    image = _loaded(synthetic_fundus.image)
    alone = load_segmenter("tiny_segmenter", tmp_path).predict(image)
    donor = load_segmenter("tiny_segmenter", tmp_path, input_size=64).predict(image)
    both = load_segmenter("composite", tmp_path).predict(image)
    assert both.probabilities.shape == alone.probabilities.shape == (5, 128, 128)
    for channel in (0, 2, 3):  # MA, EX, SE: its own
        np.testing.assert_array_equal(both.probabilities[channel], alone.probabilities[channel])
    for channel in (1, 4):  # HE, OD: the 64-px pass, resized to 128
        assert not np.array_equal(both.probabilities[channel], alone.probabilities[channel])
        np.testing.assert_allclose(
            both.probabilities[channel].mean(), donor.probabilities[channel].mean(), atol=0.02
        )
    with pytest.raises(ValueError, match="MODEL"):
        parse_channels_from("segmenter_lite0@big:HE")
    with pytest.raises(ValueError, match="MODEL"):
        parse_channels_from("segmenter_lite0@640:HE=max")
    # "=mean": that channel is the mean of both models' probabilities, the others as before
    entries = parse_channels_from("tiny_segmenter@64:HE=mean,OD")
    assert entries[0]["averaged"] == ["HE"]
    mixed = card.with_updates(extra={**card.extra, "channels_from": entries})
    (tmp_path / "mixed.json").write_text(mixed.to_json())
    averaged = load_segmenter("mixed", tmp_path).predict(image).probabilities
    np.testing.assert_allclose(averaged[1], (alone.probabilities[1] + both.probabilities[1]) / 2, atol=1e-6)
    np.testing.assert_array_equal(averaged[4], both.probabilities[4])
    np.testing.assert_array_equal(averaged[0], alone.probabilities[0])


def test_sparse_pixel_maps_stay_visible_and_every_overlay_has_a_colour_bar() -> None:
    from workbench.explain.explainers.base import Heatmap
    from workbench.reports.render import heatmap_overlay

    crop = np.full((512, 512, 3), 90, np.uint8)
    rng = np.random.default_rng(0)
    sparse = np.zeros((448, 448), np.float32)
    sparse[rng.integers(0, 448, 300), rng.integers(0, 448, 300)] = 1.0  # 0.15% of the pixels
    out = heatmap_overlay(crop, Heatmap(sparse, True, "integrated_gradients", "t", 0.1))
    changed = np.any(out != crop, axis=2)
    assert changed[:, :480].mean() > 0.05  # smoothed for display: visible at thumbnail size
    # a denser scatter (3% of the pixels at the peak) is smoothed too; a blob is drawn as it is
    dense = np.zeros((448, 448), np.float32)
    dense[rng.integers(0, 448, 6000), rng.integers(0, 448, 6000)] = 1.0
    out = heatmap_overlay(crop, Heatmap(dense, True, "integrated_gradients", "t", 0.1))
    assert np.any(out != crop, axis=2)[:, :480].mean() > 0.5
    blob = np.zeros((448, 448), np.float32)
    blob[100:200, 100:200] = 1.0
    out = heatmap_overlay(crop, Heatmap(blob, True, "gradcam", "t", 0.1))
    drawn = np.any(out != crop, axis=2)[:, :480]
    assert drawn[120:220, 120:220].all() and not drawn[300:, :300].any()  # sharp edges, nothing smeared
    empty = heatmap_overlay(crop, Heatmap(np.zeros((14, 14), np.float32), False, "gradcam", "t", 0.1))
    bar = np.any(empty != crop, axis=2)
    assert bar[:, 490:].any() and not bar[:, :400].any()  # the colour bar, on the right edge only


def test_a_segmenter_card_with_mirror_tiles_averages_each_tile_with_its_mirror(
    tiny_weights, synthetic_fundus, tmp_path
) -> None:
    """``extra.tta`` = "hflip" (``drwb train --mirror-tiles``): at the card's own crop every tile's logits
    are the mean of the tile's and its mirror image's; a smaller crop (the fast profile) runs plain."""
    import shutil

    import torch

    from models.card import ModelCard
    from models.preprocess import normalise
    from workbench.predictors import crop_for, load_segmenter

    for path in tiny_weights.glob("tiny_segmenter.*"):
        shutil.copy(path, tmp_path / path.name)
    # one tile covering the whole crop, so that the mirror of the tile is the mirror of the crop
    card = ModelCard.read(tmp_path / "tiny_segmenter.json")
    card = card.with_updates(extra={**card.extra, "tile": card.input_size})
    (tmp_path / "plain.json").write_text(card.to_json())
    (tmp_path / "mirrored.json").write_text(card.with_updates(extra={**card.extra, "tta": "hflip"}).to_json())
    image = _loaded(synthetic_fundus.image)
    plain = load_segmenter("plain", tmp_path)
    mirrored = load_segmenter("mirrored", tmp_path)
    crop, _ = crop_for(image, plain.input_size)
    tensor = torch.from_numpy(normalise(crop, card.mean, card.std))
    with torch.no_grad():  # logits of the crop and of its mirror, mirrored back, averaged
        logits = (plain.forward(tensor[None]) + plain.forward(tensor.flip(-1)[None]).flip(-1)) / 2
    expected = torch.sigmoid(logits[0]).numpy()
    np.testing.assert_allclose(mirrored.predict(image).probabilities, expected, atol=1e-5)
    assert np.abs(plain.predict(image).probabilities - expected).max() > 1e-3  # the mirror changes it
    small = load_segmenter("mirrored", tmp_path, input_size=64).predict(image).probabilities
    alone = load_segmenter("plain", tmp_path, input_size=64).predict(image).probabilities
    np.testing.assert_array_equal(small, alone)


def test_a_segmenter_card_with_an_inference_tiling_segments_with_it(
    tiny_weights, synthetic_fundus, tmp_path
) -> None:
    """``extra.inference_tile`` / ``inference_overlap`` (measured apart from the training tile) set the
    tiles at the card's own crop, and the maps are those of ``predict_tiles`` with them; a smaller crop
    (the fast profile) is still one tile."""
    import shutil

    import torch

    from models.card import ModelCard
    from models.preprocess import normalise
    from workbench.inference import predict_tiles
    from workbench.predictors import crop_for, load_segmenter

    for path in tiny_weights.glob("tiny_segmenter.*"):
        shutil.copy(path, tmp_path / path.name)
    card = ModelCard.read(tmp_path / "tiny_segmenter.json")
    tile = card.input_size // 2 + 32  # 2 x 2 tiles overlapping by 64 px
    tiled = card.with_updates(extra={**card.extra, "inference_tile": tile, "inference_overlap": 64})
    (tmp_path / "tiled.json").write_text(tiled.to_json())
    plain, other = load_segmenter("tiny_segmenter", tmp_path), load_segmenter("tiled", tmp_path)
    assert (other.tile, other.overlap) == (tile, 64) and plain.tile != tile
    image = _loaded(synthetic_fundus.image)
    crop, _ = crop_for(image, other.input_size)
    tensor = torch.from_numpy(normalise(crop, card.mean, card.std))
    with torch.no_grad():
        expected = predict_tiles(plain.forward, tensor, tile, 64)
    np.testing.assert_allclose(other.predict(image).probabilities, expected, atol=1e-5)
    assert np.abs(plain.predict(image).probabilities - expected).max() > 1e-4  # the tiling changes it
    assert load_segmenter("tiled", tmp_path, input_size=64).tile == 64


def test_unreliable_lesion_types_are_greyed_wherever_they_are_shown(tiny_workbench, synthetic_fundus) -> None:
    """A type below the reliability floor is drawn grey and labelled "(unreliable)" on the overlays, and
    its row is greyed in the apps' table and the HTML report; a reliable type keeps its own colour."""
    from dataclasses import replace

    from models.constants import LESIONS
    from workbench.analysis.lesion_trust import LesionReliability
    from workbench.reports.html_page import report_html
    from workbench.reports.render import (
        LESION_COLOUR_MAP,
        UNRELIABLE_COLOUR,
        hex_colour,
        lesion_annotations,
        lesion_table_styler,
        unreliable_label,
    )
    from workbench.reports.report import analysis_to_dict, lesion_rows

    analysis = tiny_workbench.analyze(_loaded(synthetic_fundus.image))
    masks = {code: np.zeros_like(s.mask) for code, s in analysis.lesions.items()}
    for code in ("MA", "EX"):  # one blob each, away from the disc
        masks[code][20:30, 20 + 40 * (code == "EX") : 30 + 40 * (code == "EX")] = True
    lesions = {code: replace(s, mask=masks[code]) for code, s in analysis.lesions.items() if code != "OD"}
    trust = {
        "MA": LesionReliability("MA", 0.01, False, "unreliable: validated AUPR 0.01 < 0.30"),
        "EX": LesionReliability("EX", 0.7, True, "reliable"),
    }
    analysis = replace(analysis, lesions={**lesions, "OD": analysis.lesions["OD"]}, lesion_reliability=trust)
    colour = {lesion.code: lesion for lesion in LESIONS}
    labels = [label for _, label in lesion_annotations(analysis)[1]]
    assert unreliable_label(colour["MA"].name) in labels and colour["EX"].name in labels
    assert LESION_COLOUR_MAP[unreliable_label(colour["MA"].name)] == hex_colour(UNRELIABLE_COLOUR)
    drawn = lesion_overlay(analysis, codes=["MA", "EX"], opacity=1.0, legend=False)
    scale = analysis.crop.shape[0] / masks["MA"].shape[0]
    assert tuple(drawn[int(25 * scale), int(25 * scale)]) == UNRELIABLE_COLOUR
    assert tuple(drawn[int(25 * scale), int(65 * scale)]) == tuple(colour["EX"].colour)
    import gradio as gr

    sent = gr.Dataframe().postprocess(lesion_table_styler(lesion_rows(analysis)))  # what the app sends
    greyed = {
        row[0]: all("italic" in css for css in styles)
        for row, styles in zip(sent.data, sent.metadata["styling"], strict=True)
    }
    assert greyed["Microaneurysms (MA)"] and not greyed["Hard exudates (EX)"]  # the legend's names
    assert sent.metadata["display_value"][0][5] == "0.01"  # AUPR to 2 decimals, not pandas' 6
    page = report_html(analysis_to_dict(analysis), {})
    assert page.count('<tr style="color: #9e9e9e; font-style: italic">') == 1


def test_a_pixel_claimed_by_two_lesion_types_is_kept_by_one() -> None:
    """A reliable type keeps a contested pixel over an unreliable one whatever the probabilities; between
    two of the same trust the higher probability wins; uncontested pixels and the optic disc stay as
    thresholded."""
    from workbench.analysis.lesion_maps import one_type_per_pixel

    index = {code: i for i, code in enumerate(LESION_CODES)}
    probabilities = np.zeros((len(LESION_CODES), 4, 4), np.float32)
    probabilities[index["EX"], 0, 0], probabilities[index["SE"], 0, 0] = 0.6, 0.9  # EX reliable, SE not
    probabilities[index["HE"], 1, 1], probabilities[index["EX"], 1, 1] = 0.8, 0.7  # both reliable
    probabilities[index["MA"], 2, 2], probabilities[index["SE"], 2, 2] = 0.4, 0.6  # both unreliable
    probabilities[index["SE"], 3, 3] = 0.9  # uncontested
    probabilities[index["OD"], 0:2, 0:2] = 0.9  # the disc under lesions keeps its mask
    thresholds = dict.fromkeys(LESION_CODES, 0.3)
    masks = one_type_per_pixel(probabilities, thresholds, reliable=frozenset({"HE", "EX"}))
    owners = {(y, x): [c for c in LESION_CODES if c != "OD" and masks[c][y, x]] for y, x in np.ndindex(4, 4)}
    assert owners[(0, 0)] == ["EX"] and owners[(1, 1)] == ["HE"] and owners[(2, 2)] == ["SE"]
    assert owners[(3, 3)] == ["SE"] and sum(map(len, owners.values())) == 4
    assert masks["OD"][0:2, 0:2].all() and masks["OD"].sum() == 4
    # without a reliable type the higher probability decides everywhere
    plain = one_type_per_pixel(probabilities, thresholds)
    assert plain["SE"][0, 0] and not plain["EX"][0, 0]


def test_analyze_never_gives_a_pixel_two_lesion_types(tiny_workbench, synthetic_fundus) -> None:
    analysis = tiny_workbench.analyze(_loaded(synthetic_fundus.image))
    claims = sum(s.mask.astype(int) for code, s in analysis.lesions.items() if code != "OD")
    assert claims.max() <= 1
    # the tiny untrained segmenter claims pixels for several types at once before the rule
    probabilities = np.stack([analysis.lesions[code].probability.astype(np.float32) for code in LESION_CODES])
    thresholds = tiny_workbench._thresholds()
    lesion_channels = [(i, c) for i, c in enumerate(LESION_CODES) if c != "OD"]
    raw = sum((probabilities[i] >= thresholds[c]).astype(int) for i, c in lesion_channels)
    assert raw.max() > 1


def test_a_reliable_lesion_is_drawn_over_an_unreliable_neighbour(tiny_workbench, synthetic_fundus) -> None:
    """Masks are dilated for visibility; where a grey (unreliable) lesion's halo meets a reliable lesion,
    the reliable colour stays on top."""
    from dataclasses import replace

    from models.constants import LESIONS
    from workbench.analysis.lesion_trust import LesionReliability
    from workbench.reports.render import UNRELIABLE_COLOUR

    analysis = tiny_workbench.analyze(_loaded(synthetic_fundus.image))
    masks = {code: np.zeros_like(s.mask) for code, s in analysis.lesions.items()}
    masks["EX"][20:30, 20:30] = True
    masks["SE"][20:30, 30:40] = True  # touching: SE's dilation reaches into EX (SE is drawn after EX)
    lesions = {code: replace(s, mask=masks[code]) for code, s in analysis.lesions.items()}
    trust = {
        "EX": LesionReliability("EX", 0.7, True, "reliable"),
        "SE": LesionReliability("SE", 0.1, False, "unreliable: validated AUPR 0.10 < 0.30"),
    }
    analysis = replace(analysis, lesions=lesions, lesion_reliability=trust)
    drawn = lesion_overlay(analysis, codes=["EX", "SE"], opacity=1.0, legend=False)
    scale = analysis.crop.shape[0] / masks["EX"].shape[0]
    ex = {lesion.code: tuple(lesion.colour) for lesion in LESIONS}["EX"]
    first_se = int(np.ceil(30 * scale))  # SE's first column on the crop; its dilation reaches one left
    assert tuple(drawn[int(25 * scale), first_se - 1]) == ex
    assert tuple(drawn[int(25 * scale), first_se + 1]) == UNRELIABLE_COLOUR
    assert tuple(drawn[int(25 * scale), int(35 * scale)]) == UNRELIABLE_COLOUR
