"""Quality verdict: fundi pass; a holiday photo, a blank frame, blur, darkness and glare are flagged."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from workbench.fundus import prepare_fundus
from workbench.io.idrid import IDRiD
from workbench.io.image_io import LoadedImage, load_image


def _verdict(rgb: np.ndarray):
    loaded = LoadedImage(
        rgb=rgb, original_size=rgb.shape[:2], source_format="PNG", source_mode="RGB", name="x"
    )
    return prepare_fundus(loaded, 512).quality


def test_synthetic_fundus_is_gradeable(synthetic_fundus) -> None:
    report = _verdict(synthetic_fundus.image)
    assert report.gradeable, report.reasons


def test_blank_image_has_no_fundus_field() -> None:
    report = _verdict(np.zeros((400, 600, 3), np.uint8))
    assert not report.gradeable
    assert any("no fundus field" in reason for reason in report.reasons)


def test_holiday_photo_is_not_a_fundus() -> None:
    """Blue sky over green grass, bright to the corners."""
    rng = np.random.default_rng(1)
    photo = np.zeros((480, 640, 3), np.uint8)
    photo[:240] = (110, 160, 235)
    photo[240:] = (60, 150, 50)
    photo = np.clip(photo + rng.normal(0, 12, photo.shape), 0, 255).astype(np.uint8)
    report = _verdict(photo)
    assert not report.gradeable
    assert any("no fundus field" in r for r in report.reasons)
    assert any("colours are not those of a colour fundus" in r for r in report.reasons)


def test_a_grayscale_fundus_is_named_grayscale(synthetic_fundus) -> None:
    """A grayscale file (three equal channels once loaded) is told apart from a non-fundus colour photo."""
    gray = cv2.cvtColor(cv2.cvtColor(synthetic_fundus.image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    report = _verdict(gray)
    assert not report.gradeable and any("a grayscale picture" in r for r in report.reasons)
    assert not any("colours are not those" in r for r in report.reasons)
    assert report.measures["colour_spread"] == 0.0
    assert _verdict(synthetic_fundus.image).measures["colour_spread"] > 2.0


def test_a_strip_is_not_shaped_like_a_fundus_and_not_called_grayscale(synthetic_fundus) -> None:
    """A 4000 x 50 red strip was called 'a grayscale picture ... too dark': the erosion that keeps the
    measures off a field's straight edges left nothing of it, and the black padding was measured."""
    from workbench.quality import ELONGATED, NOT_A_FUNDUS, forced_grade_warning

    strip = np.zeros((50, 4000, 3), np.uint8)
    strip[:] = (160, 70, 40)  # fundus red
    report = _verdict(strip)
    assert not report.gradeable and ELONGATED in report.reasons and ELONGATED in NOT_A_FUNDUS
    assert report.measures["aspect_ratio"] == 80.0
    assert not any("grayscale" in r or "too dark" in r for r in report.reasons), report.reasons
    assert forced_grade_warning(report.reasons).startswith("NOT A FUNDUS PHOTOGRAPH?")
    # a widescreen camera's frame (16:9) keeps its shape check passed
    assert _verdict(cv2.resize(synthetic_fundus.image, (640, 360))).measures["aspect_ratio"] < 2.5


def test_blurred_fundus_is_out_of_focus(synthetic_fundus) -> None:
    blurred = cv2.GaussianBlur(synthetic_fundus.image, (0, 0), 6)
    report = _verdict(blurred)
    assert any("out of focus" in r for r in report.reasons)


def test_dark_fundus_is_too_dark(synthetic_fundus) -> None:
    dark = (synthetic_fundus.image.astype(np.float32) * 0.15).astype(np.uint8)
    report = _verdict(dark)
    assert any("too dark" in r for r in report.reasons)


def test_overexposed_fundus(synthetic_fundus) -> None:
    bright = np.clip(synthetic_fundus.image.astype(np.float32) * 4 + 60, 0, 255).astype(np.uint8)
    report = _verdict(bright)
    assert any("overexposed" in r for r in report.reasons)


def test_a_thumbnail_is_too_small_to_grade_whatever_else_fails(synthetic_fundus) -> None:
    """A 64-px copy of a fundus is refused for its size, in the original image's pixels: the same
    photograph decoded at reduced size (fewer pixels than it has) is not."""
    tiny = cv2.resize(synthetic_fundus.image, (96, 64), interpolation=cv2.INTER_AREA)
    report = _verdict(tiny)
    assert not report.gradeable and report.reasons[0].startswith("too small to grade")
    assert report.measures["fov_diameter_px"] < 100
    reduced = LoadedImage(tiny, (64 * 16, 96 * 16), "JPEG", "RGB", "x")  # a 1536x1024 photograph at 1/16
    assert not any("too small" in r for r in prepare_fundus(reduced, 512).quality.reasons)
    full = _verdict(synthetic_fundus.image)
    assert not any("too small" in r for r in full.reasons)
    # the same photograph decoded at a quarter of its size reports the same diameter (original pixels)
    h, w = synthetic_fundus.image.shape[:2]
    quarter = cv2.resize(synthetic_fundus.image, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    decoded = prepare_fundus(LoadedImage(quarter, (h, w), "JPEG", "RGB", "x"), 512).quality
    assert decoded.measures["fov_diameter_px"] == pytest.approx(full.measures["fov_diameter_px"], rel=0.03)


def test_measures_are_reported(synthetic_fundus) -> None:
    report = _verdict(synthetic_fundus.image)
    assert set(report.measures) >= {
        "fov_area",
        "fov_diameter_px",
        "focus",
        "contrast",
        "mean_luminance",
        "red_dominance",
    }


@pytest.mark.realdata
def test_real_idrid_images_are_gradeable(real_idrid) -> None:
    """Calibration guard: every 4th real IDRiD grading image passes; its 3-px blur fails on focus."""
    records = IDRiD(real_idrid).grading("train")[::4]
    failures, blurred_pass = [], 0
    for record in records:
        image = load_image(record.image_path, min_side=512)
        prepared = prepare_fundus(image, 512)
        if not prepared.quality.gradeable:
            failures.append((record.name, prepared.quality.reasons))
        soft = cv2.GaussianBlur(image.rgb, (0, 0), 3 * image.rgb.shape[1] / 640)
        blurred = LoadedImage(soft, image.original_size, "JPEG", "RGB", record.name)
        blurred_pass += prepare_fundus(blurred, 512).quality.gradeable
    assert not failures, failures[:5]
    assert blurred_pass <= 0.05 * len(records)
