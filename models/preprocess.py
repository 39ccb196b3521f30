"""Pixel preprocessing shared by training and analysis, so both see identical pixels.

The pipeline is: (decoded image, possibly at reduced size) -> field-of-view square crop -> resize to the
model's input size -> normalise. Every step is recorded in one affine ``CropTransform`` from the
*original* image frame (the full-size file, after EXIF orientation) to the model-input frame, so any
mask, heatmap or point computed on the crop maps back to the original pixels.

Coordinate convention: pixel centres sit at integer coordinates, x to the right, y down (OpenCV's).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.fov import FieldOfView, detect_fov

__all__ = ["CROP_MARGIN", "CropTransform", "crop_to_fov", "normalise", "resize_crop", "to_chw_float"]

CROP_MARGIN = 0.02  # relative margin around the field-of-view circle: a crop's side is 2 x radius x 1.02


@dataclass(frozen=True)
class CropTransform:
    """Affine map from the original image frame to a square ``size`` x ``size`` crop.

    Attributes:
        matrix: 2x3 float64 affine, original (x, y) -> crop (u, v).
        original_size: (height, width) of the original image.
        size: side of the square crop in pixels.
    """

    matrix: tuple[tuple[float, float, float], tuple[float, float, float]]
    original_size: tuple[int, int]
    size: int

    @property
    def forward(self) -> np.ndarray:
        return np.asarray(self.matrix, dtype=np.float64)

    @property
    def inverse(self) -> np.ndarray:
        return cv2.invertAffineTransform(self.forward)

    @property
    def scale(self) -> float:
        """Crop pixels per original pixel (isotropic)."""
        return float(self.matrix[0][0])

    def to_crop(self, points_xy: np.ndarray) -> np.ndarray:
        """Map (N, 2) original-frame points to crop coordinates."""
        pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        return pts @ self.forward[:, :2].T + self.forward[:, 2]

    def to_original(self, points_xy: np.ndarray) -> np.ndarray:
        """Map (N, 2) crop-frame points back to original-frame coordinates."""
        inv = self.inverse
        pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        return pts @ inv[:, :2].T + inv[:, 2]

    def warp_to_original(self, array: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Resample a crop-frame array (size, size[, C]) onto the original frame (H, W[, C]).

        Pixels outside the crop become 0. Use ``cv2.INTER_NEAREST`` for label masks.
        """
        height, width = self.original_size
        src = array.astype(np.float32) if array.dtype == np.bool_ else array
        out = cv2.warpAffine(
            src,
            self.forward,
            (width, height),
            flags=interpolation | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        return out > 0.5 if array.dtype == np.bool_ else out

    def warp_to_crop(self, array: np.ndarray, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
        """Resample an original-frame array (H, W[, C]) into the crop frame (size, size[, C]).

        Uses a box crop + ``cv2.resize`` so that ``INTER_AREA`` anti-aliasing is available for large
        downscales (a 4288-px mask to 512 px). Boolean masks come back as float32 area fractions.
        """
        return _crop_and_resize(array, self, interpolation)


def _square_box(fov: FieldOfView, margin: float) -> tuple[int, int, int]:
    """Integer square box (x0, y0, side) around the FOV circle, in the frame the FOV was found in."""
    side = max(8, int(round(2 * fov.radius * (1 + margin))))
    x0 = int(round(fov.cx + 0.5 - side / 2))
    y0 = int(round(fov.cy + 0.5 - side / 2))
    return x0, y0, side


def _pad_window(array: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The ``side`` x ``side`` window at (x0, y0) of ``array``, zero-padded where it leaves the array."""
    h, w = array.shape[:2]
    window = array[max(0, y0) : min(h, y0 + side), max(0, x0) : min(w, x0 + side)]
    pad = ((max(0, -y0), max(0, y0 + side - h)), (max(0, -x0), max(0, x0 + side - w)))
    if any(p for pair in pad for p in pair):
        window = np.pad(window, pad + ((0, 0),) * (array.ndim - 2), mode="constant")
    return window


def _crop_and_resize(array: np.ndarray, transform: CropTransform, interpolation: int) -> np.ndarray:
    # The array may be in a scaled copy of the original frame (a = (x + 0.5) * f - 0.5).
    f = array.shape[1] / transform.original_size[1]
    inv = transform.inverse
    orig_per_crop = 1.0 / transform.scale
    # Left/top pixel *edge* of the crop (u = -0.5) in the array's edge coordinates.
    x_edge = (inv[0, 2] - 0.5 * orig_per_crop + 0.5) * f
    y_edge = (inv[1, 2] - 0.5 * orig_per_crop + 0.5) * f
    side = max(1, int(round(transform.size * orig_per_crop * f)))
    src = array.astype(np.float32) if array.dtype == np.bool_ else array
    window = _pad_window(src, int(round(x_edge)), int(round(y_edge)), side)
    return cv2.resize(window, (transform.size, transform.size), interpolation=interpolation)


def crop_to_fov(
    rgb: np.ndarray,
    size: int,
    original_size: tuple[int, int] | None = None,
    fov: FieldOfView | None = None,
    margin: float = CROP_MARGIN,
) -> tuple[np.ndarray, CropTransform, FieldOfView]:
    """Crop an RGB uint8 image to a square around its field of view and resize it to ``size``.

    Args:
        rgb: (h, w, 3) uint8 RGB, possibly decoded at reduced size from a larger original.
        size: output side in pixels.
        original_size: (H, W) of the full-size original; defaults to ``rgb``'s own size. When the
            decoded image is smaller, the returned transform still maps from the original frame.
        fov: a precomputed field of view in ``rgb``'s frame; detected when omitted.
        margin: relative margin around the circle, so that its rim is not clipped.

    Returns:
        (crop, transform, fov_original): the (size, size, 3) uint8 crop, the affine from the original
        frame to the crop, and the field of view expressed in the original frame. Areas of the box
        that fall outside the image are black, as the fundus background is.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got shape {rgb.shape} dtype {rgb.dtype}")
    height, width = rgb.shape[:2]
    original_size = original_size or (height, width)
    fov = fov or detect_fov(rgb)
    x0, y0, side = _square_box(fov, margin)
    # Original -> decoded: d = (x + 0.5) / k - 0.5; decoded -> crop: u = s * (d + 0.5 - x0) - 0.5.
    # Composed: u = (s / k) * x + s * (0.5 / k - x0) - 0.5.
    k = original_size[1] / width
    s = size / side
    matrix = ((s / k, 0.0, s * (0.5 / k - x0) - 0.5), (0.0, s / k, s * (0.5 / k - y0) - 0.5))
    transform = CropTransform(
        matrix=matrix, original_size=(int(original_size[0]), int(original_size[1])), size=size
    )
    window = _pad_window(rgb, x0, y0, side)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    crop = cv2.resize(window, (size, size), interpolation=interpolation)
    return crop, transform, fov.scaled(k)


def normalise(crop: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W), scaled to [0, 1] then standardised per channel.

    Returns a new array; the input is never modified.
    """
    chw = to_chw_float(crop)
    mean_arr = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_arr = np.asarray(std, dtype=np.float32)[:, None, None]
    return (chw - mean_arr) / std_arr


def to_chw_float(crop: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32) / 255.0


def resize_crop(crop: np.ndarray, size: int) -> np.ndarray:
    """Resize a square crop to ``size`` (area averaging when shrinking); pixel edges stay aligned, so a
    point maps as ``u = (x + 0.5) * size / side - 0.5``. Training validation and inference both use it."""
    if crop.shape[0] == size:
        return crop.copy()
    interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)
