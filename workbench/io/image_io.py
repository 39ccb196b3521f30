"""Safe loading of user-supplied fundus images.

Accepts JPEG, PNG, TIFF, BMP, WebP and DICOM (``workbench.io.dicom``) from a path or raw bytes and always
returns RGB uint8, whatever the file held (grayscale, palette, RGBA, 16-bit, CMYK, YCbCr). Each way a file
can be unusable gets its own exception (``workbench.io.errors``) with a message that names the file and the
problem, so the apps can show it verbatim and keep serving. The file itself is only ever read.

Large JPEGs are decoded at reduced size (libjpeg's DCT scaling through PIL ``draft``) when the caller
says how many pixels it needs; ``LoadedImage.original_size`` still reports the full size, so every
coordinate the analysis returns is in the original frame.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from workbench.io import dicom
from workbench.io.errors import (
    EmptyImageError,
    ImageLoadError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedImageError,
    check_size,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EmptyImageError",
    "HEAD_BYTES",
    "IMAGE_SUFFIXES",
    "ImageLoadError",
    "ImageTooLargeError",
    "LoadedImage",
    "NotAnImageError",
    "SUPPORTED_FORMATS",
    "SUPPORTED_FORMATS_TEXT",
    "TruncatedImageError",
    "UnsupportedImageError",
    "is_image_file",
    "is_image_name",
    "load_image",
]

SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "TIFF", "BMP", "WEBP", "MPO")
# the same list as every message names it (MPO is the multi-picture JPEG some cameras write)
SUPPORTED_FORMATS_TEXT = "JPEG, PNG, TIFF, BMP, WebP or DICOM"
# how much of a suffix-less file ``is_image_name`` needs to see (a DICOM preamble and its marker)
HEAD_BYTES = dicom.MAGIC_OFFSET + 4
# the files a folder, a zip or an upload box offers as photographs by name; any other file counts when its
# content is DICOM (exports carry bare names such as IM000001, or UIDs: ``is_image_name``)
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".tif",
    ".tiff",
    ".bmp",
    ".webp",
    ".dcm",
    ".dicom",
)
# 64 MP: twice the largest fundus cameras on the market; a decompression bomb is refused before decoding.
DEFAULT_MAX_PIXELS: int = 64_000_000


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and where it came from.

    Attributes:
        rgb: (h, w, 3) uint8 RGB pixels, possibly reduced from the original by ``decode_factor``.
        original_size: (H, W) of the full image after EXIF orientation: the frame every result uses.
        source_format: PIL's format name (``"JPEG"``...).
        source_mode: PIL's pixel mode before conversion (``"L"``, ``"I;16"``, ``"RGBA"``...).
        name: file name, or ``"<bytes>"``.
        laterality: the eye a DICOM file names and the tag naming it (``"ImageLaterality R"``), else None.
    """

    rgb: np.ndarray
    original_size: tuple[int, int]
    source_format: str
    source_mode: str
    name: str
    laterality: str | None = None

    @property
    def decode_factor(self) -> float:
        """Original pixels per decoded pixel (1.0 when decoded at full size)."""
        return self.original_size[1] / self.rgb.shape[1]

    @property
    def decoded_to_original(self) -> np.ndarray:
        """3x3 affine from ``rgb``'s pixels to the original frame (pixel centres at integers)."""
        k = self.decode_factor
        return np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1]], np.float64)


def is_image_name(name: str, head: bytes | None = None) -> bool:
    """Whether a file called ``name`` is offered as a photograph: an image suffix, or any other name (a
    bare export name, a UID such as ``1.2.826.0.1.3680043.8.498.12345``) with a DICOM header in ``head``
    (its first ``HEAD_BYTES`` bytes or more; None: not known, so not offered). A DICOMDIR, the index of a
    media export, is not a photograph."""
    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
        return True
    return head is not None and Path(name).name.upper() != "DICOMDIR" and dicom.is_dicom(head)


def is_image_file(path: Path) -> bool:
    """``is_image_name`` for a file on disk, reading its head only when the suffix does not decide; a file
    that cannot be read is not offered (the batch goes on without it)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return path.is_file()
    try:
        if not path.is_file():
            return False
        with path.open("rb") as handle:
            return is_image_name(path.name, handle.read(HEAD_BYTES))
    except OSError:
        return False


def _read(source: str | Path | bytes, name: str) -> bytes:
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no such file")
        data = path.read_bytes()
    if not data:
        raise EmptyImageError(f"{name}: the file is empty (0 bytes)")
    return data


def _open(data: bytes, name: str) -> Image.Image:
    try:
        # Our own pixel limit (load_image) gives the clearer message; PIL's warning is redundant.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: rejected as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImageError(
            f"{name}: not a recognised image file; supported formats: {SUPPORTED_FORMATS_TEXT}"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # the header itself is cut short or corrupt
        raise TruncatedImageError(f"{name}: the image file is truncated or corrupt ({exc})") from exc
    if image.format not in SUPPORTED_FORMATS:
        raise UnsupportedImageError(
            f"{name}: {image.format} images are not supported; use {SUPPORTED_FORMATS_TEXT}"
        )
    return image


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to RGB uint8. Alpha is composited over black, the fundus background."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def load_image(
    source: str | Path | bytes,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> LoadedImage:
    """Load a user image as RGB uint8.

    Args:
        source: a file path or the file's bytes.
        min_side: when given, a JPEG may be decoded at 1/2, 1/4 or 1/8 size as long as its shorter side
            stays >= ``min_side`` (the field of view of a fundus is about as wide as the shorter side).
            ``None`` decodes at full size.
        max_pixels: refuse images with more pixels than this, before decoding them.
        name: a label for error messages; defaults to the file name.

    Raises:
        EmptyImageError, NotAnImageError, UnsupportedImageError, TruncatedImageError,
        ImageTooLargeError: each with a message naming the file and the problem.
        FileNotFoundError: when ``source`` is a path that does not exist.
    """
    name = name or (Path(source).name if isinstance(source, str | Path) else "<bytes>")
    data = _read(source, name)
    part10 = dicom.is_dicom(data)  # by content, whatever the file is called
    if part10 or Path(name).suffix.lower() in dicom.SUFFIXES:  # a *.dcm without the preamble too
        rgb, mode, laterality = dicom.decode(data, name, max_pixels, force=not part10)
        return LoadedImage(
            rgb=rgb,
            original_size=rgb.shape[:2],
            source_format="DICOM",
            source_mode=mode,
            name=name,
            laterality=laterality,
        )
    image = _open(data, name)
    width, height = image.size
    check_size(name, width, height, max_pixels)
    source_format, source_mode = image.format or "?", image.mode
    try:
        # a PNG's EXIF may follow its pixels: reading it decodes them, so a cut-short file fails here
        orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
        if min_side and image.format in ("JPEG", "MPO") and image.mode in ("RGB", "L", "CMYK", "YCbCr"):
            scale = max(1, min(8, min(width, height) // min_side))
            if scale >= 2:
                image.draft(image.mode, (width // scale, height // scale))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
        image = ImageOps.exif_transpose(image)
        rgb = _to_rgb_uint8(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise TruncatedImageError(
            f"{name}: the {source_format} file is truncated or corrupt ({exc})"
        ) from exc
    except Image.DecompressionBombWarning as exc:
        raise ImageTooLargeError(f"{name}: rejected as a possible decompression bomb ({exc})") from exc
    original_size = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
    return LoadedImage(
        rgb=np.ascontiguousarray(rgb),
        original_size=(int(original_size[0]), int(original_size[1])),
        source_format=source_format,
        source_mode=source_mode,
        name=name,
    )
