"""Why a user's file cannot be used as a fundus image: one exception per kind of problem, each message
naming the file and the problem, so the apps can show it verbatim and keep serving. ``image_io`` re-exports
them (its callers import them from there); the DICOM reader raises them too."""

from __future__ import annotations

__all__ = [
    "EmptyImageError",
    "ImageLoadError",
    "ImageTooLargeError",
    "NotAnImageError",
    "TruncatedImageError",
    "UnsupportedImageError",
    "check_size",
]


class ImageLoadError(ValueError):
    """Base class: the file cannot be used as a fundus image. The message is meant for the user."""


class EmptyImageError(ImageLoadError):
    """The file has zero bytes."""


class NotAnImageError(ImageLoadError):
    """The bytes are not an image in any format we read."""


class UnsupportedImageError(ImageLoadError):
    """An image, but in a format or pixel mode we do not accept."""


class TruncatedImageError(ImageLoadError):
    """The image header is fine but the pixel data ends early or is corrupt."""


class ImageTooLargeError(ImageLoadError):
    """More pixels than ``max_pixels`` (a decompression-bomb guard)."""


def check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse an image with no pixels or more than ``max_pixels``, from its header, before decoding."""
    if width < 1 or height < 1:
        raise NotAnImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.0f} MP; downscale it first"
        )
