"""Field-of-view crop: geometry round trips within 1 px, reduced decoding, no input mutation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.enhance import ENHANCEMENTS, ben_graham, clahe_luminance
from models.fov import detect_fov
from models.preprocess import crop_to_fov, normalise
from workbench.io.synthetic import make_fundus


@pytest.mark.parametrize("size", [(712, 1072), (600, 600), (1000, 700)])
def test_fov_found_on_synthetic_fundus(size: tuple[int, int]) -> None:
    sample = make_fundus(seed=3, size=size)
    fov = detect_fov(sample.image)
    assert abs(fov.cx - sample.fov_xy[0]) < 0.02 * sample.fov_radius
    assert abs(fov.cy - sample.fov_xy[1]) < 0.02 * sample.fov_radius
    assert abs(fov.radius - sample.fov_radius) < 0.03 * sample.fov_radius
    assert fov.corners_dark and fov.fill_ratio > 0.9


def test_point_round_trip_within_one_pixel(synthetic_fundus) -> None:
    crop, transform, _ = crop_to_fov(synthetic_fundus.image, 384)
    points = np.array([synthetic_fundus.od_xy, synthetic_fundus.fovea_xy, (10.0, 20.0)])
    back = transform.to_original(transform.to_crop(points))
    assert np.abs(back - points).max() < 1e-6


def test_centres_land_on_the_same_anatomy_in_the_crop(synthetic_fundus) -> None:
    crop, transform, _ = crop_to_fov(synthetic_fundus.image, 512)
    od_crop = transform.to_crop(np.array([synthetic_fundus.od_xy]))[0]
    disc_in_crop = transform.warp_to_crop(synthetic_fundus.masks["OD"]) > 0.5
    ys, xs = np.nonzero(disc_in_crop)
    assert np.hypot(xs.mean() - od_crop[0], ys.mean() - od_crop[1]) < 1.0


def test_mask_round_trip_within_one_pixel(synthetic_fundus) -> None:
    """A mask taken into the crop and back lies on the original (centroid within 1 px, IoU high)."""
    _, transform, _ = crop_to_fov(synthetic_fundus.image, 1024)
    disc = synthetic_fundus.masks["OD"]
    back = transform.warp_to_original(transform.warp_to_crop(disc) > 0.5, cv2.INTER_LINEAR)
    ys, xs = np.nonzero(disc)
    yb, xb = np.nonzero(back)
    assert np.hypot(xs.mean() - xb.mean(), ys.mean() - yb.mean()) < 1.0
    iou = (disc & back).sum() / (disc | back).sum()
    assert iou > 0.95


def test_reduced_decode_maps_to_original_frame(synthetic_fundus) -> None:
    """A crop made from a 2x smaller decode maps points to the same original pixels as a full decode."""
    image = synthetic_fundus.image
    half = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    _, full_t, _ = crop_to_fov(image, 512)
    _, half_t, fov = crop_to_fov(half, 512, original_size=image.shape[:2])
    od = np.array([synthetic_fundus.od_xy])
    assert np.abs(full_t.to_crop(od) - half_t.to_crop(od)).max() < 2.0
    assert abs(fov.radius - synthetic_fundus.fov_radius) < 0.03 * synthetic_fundus.fov_radius


def test_heatmap_warp_back_is_placed_at_the_point(synthetic_fundus) -> None:
    _, transform, _ = crop_to_fov(synthetic_fundus.image, 256)
    heat = np.zeros((256, 256), np.float32)
    u, v = (int(round(c)) for c in transform.to_crop(np.array([synthetic_fundus.fovea_xy]))[0])
    heat[v, u] = 1.0
    original = transform.warp_to_original(heat)
    assert original.shape == synthetic_fundus.image.shape[:2]
    y, x = np.unravel_index(np.argmax(original), original.shape)
    fx, fy = synthetic_fundus.fovea_xy
    assert np.hypot(x - fx, y - fy) <= 1.0 / transform.scale + 1


def test_crop_rejects_wrong_dtype() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        crop_to_fov(np.zeros((10, 10, 3), np.float32), 8)


def test_preprocessing_never_mutates_input(synthetic_fundus) -> None:
    image = synthetic_fundus.image.copy()
    before = image.copy()
    crop, _, _ = crop_to_fov(image, 128)
    normalise(crop, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for enhance in ENHANCEMENTS.values():
        enhance(image)
    assert np.array_equal(image, before)


def test_normalise_values() -> None:
    crop = np.full((2, 2, 3), 255, np.uint8)
    out = normalise(crop, (0.5, 0.0, 1.0), (0.5, 1.0, 1.0))
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    assert np.allclose(out[0], 1.0) and np.allclose(out[1], 1.0) and np.allclose(out[2], 0.0)


def test_enhancements_keep_shape_and_background(synthetic_fundus) -> None:
    crop, _, _ = crop_to_fov(synthetic_fundus.image, 256)
    graham = ben_graham(crop)
    assert graham.shape == crop.shape and graham.dtype == np.uint8
    assert graham[0, 0].max() == 0  # black frame stays black
    clahe = clahe_luminance(crop)
    inside = crop[128, 100:156]
    assert clahe[128, 100:156].std() >= inside.std() * 0.9
