"""One call from a loaded image to what every model and the quality check need.

``prepare_fundus`` is the single place where a user image becomes a field-of-view crop, so the apps, the
command line, the benchmarks and training all cut the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.fov import FieldOfView
from models.preprocess import CropTransform, crop_to_fov
from workbench.io.image_io import LoadedImage
from workbench.quality import QualityReport, QualityThresholds, assess_quality

__all__ = ["PreparedFundus", "fov_in_crop", "prepare_fundus"]


@dataclass(frozen=True)
class PreparedFundus:
    """A square crop of the field of view and how it maps back.

    Attributes:
        crop: (size, size, 3) uint8 RGB.
        transform: original frame -> crop frame.
        fov: the field of view in the original frame.
        quality: the gradeability verdict.
    """

    crop: np.ndarray
    transform: CropTransform
    fov: FieldOfView
    quality: QualityReport


def fov_in_crop(fov: FieldOfView, transform: CropTransform) -> FieldOfView:
    """The original-frame field of view expressed in the crop's frame."""
    cx, cy = transform.to_crop(np.array([[fov.cx, fov.cy]]))[0]
    return FieldOfView(
        float(cx),
        float(cy),
        fov.radius * transform.scale,
        fov.area_fraction,
        fov.fill_ratio,
        fov.corners_dark,
    )


def prepare_fundus(
    image: LoadedImage, size: int = 512, thresholds: QualityThresholds | None = None
) -> PreparedFundus:
    """Crop ``image`` to its field of view at ``size`` px and judge its quality."""
    crop, transform, fov = crop_to_fov(image.rgb, size, image.original_size)
    quality = assess_quality(  # fov: original pixels
        crop, fov, fov_in_crop(fov, transform), thresholds, original_size=image.original_size
    )
    return PreparedFundus(crop=crop, transform=transform, fov=fov, quality=quality)
