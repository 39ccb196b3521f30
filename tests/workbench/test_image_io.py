"""Safe loading: every pixel mode becomes RGB uint8; each bad input has its own clear error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.io.image_io import (
    EmptyImageError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedImageError,
    load_image,
)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "WEBP", "JPEG"])
def test_formats_load_as_rgb_uint8(rgb: np.ndarray, fmt: str) -> None:
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    loaded = load_image(_encode(Image.fromarray(rgb), fmt, **kwargs))
    assert loaded.rgb.shape == (40, 60, 3) and loaded.rgb.dtype == np.uint8
    assert loaded.original_size == (40, 60)
    if fmt != "JPEG":
        assert np.array_equal(loaded.rgb, rgb)


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = np.arange(40 * 60, dtype=np.uint8).reshape(40, 60)
    loaded = load_image(_encode(Image.fromarray(gray, "L"), "PNG"))
    assert loaded.source_mode == "L"
    assert np.array_equal(loaded.rgb[..., 0], gray) and np.array_equal(loaded.rgb[..., 2], gray)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    loaded = load_image(_encode(Image.fromarray(values), "PNG"))
    assert loaded.rgb[0, :, 0].tolist() == [0, 128, 255]


def test_rgba_is_composited_over_black(rgb: np.ndarray) -> None:
    alpha = np.zeros((40, 60), np.uint8)
    alpha[:, 30:] = 255
    loaded = load_image(_encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"))
    assert loaded.rgb[:, :30].max() == 0
    assert np.array_equal(loaded.rgb[:, 30:], rgb[:, 30:])


def test_palette_image(rgb: np.ndarray) -> None:
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    loaded = load_image(_encode(palette, "PNG"))
    assert loaded.source_mode == "P"
    assert np.array_equal(loaded.rgb, np.asarray(palette.convert("RGB")))


def test_exif_orientation_is_applied(rgb: np.ndarray) -> None:
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(_encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert loaded.rgb.shape == (60, 40, 3)
    assert loaded.original_size == (60, 40)


def test_reduced_jpeg_decoding_keeps_original_size() -> None:
    big = np.full((1600, 2400, 3), 120, np.uint8)
    loaded = load_image(_encode(Image.fromarray(big), "JPEG"), min_side=400)
    assert loaded.rgb.shape[0] == 400 and loaded.original_size == (1600, 2400)
    assert loaded.decode_factor == pytest.approx(4.0)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(EmptyImageError, match="empty.jpg: the file is empty"):
        load_image(path)


def test_not_an_image() -> None:
    with pytest.raises(NotAnImageError, match="not a recognised image"):
        load_image(b"%PDF-1.4 this is a document", name="report.pdf")


def test_truncated_jpeg(rgb: np.ndarray) -> None:
    data = _encode(Image.fromarray(np.tile(rgb, (10, 10, 1))), "JPEG")
    with pytest.raises(TruncatedImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2], name="cut.jpg")


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
def test_truncated_other_formats(rgb: np.ndarray, fmt: str) -> None:
    """Cut in the middle of the pixels: a PNG's EXIF lookup decodes them, and used to escape as a bare
    OSError (a traceback in the CLI that stopped a whole batch)."""
    noisy = np.random.default_rng(1).integers(0, 256, (400, 600, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noisy), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    with pytest.raises(TruncatedImageError, match=f"cut: the ({fmt}|image) file is truncated or corrupt"):
        load_image(data[: len(data) // 2], name="cut")


def test_truncated_header() -> None:
    with pytest.raises(TruncatedImageError, match="cut.jpg: the image file is truncated or corrupt"):
        load_image(b"\xff\xd8\xff\xe0 truncated", name="cut.jpg")


def test_unsupported_format(rgb: np.ndarray) -> None:
    with pytest.raises(UnsupportedImageError, match="GIF images are not supported"):
        load_image(_encode(Image.fromarray(rgb), "GIF"))


def test_too_many_pixels_is_refused_before_decoding() -> None:
    # A 10000x10000 PNG header; the limit check must fire on the header alone.
    data = _encode(Image.new("L", (10000, 10000)), "PNG")
    with pytest.raises(ImageTooLargeError, match=r"100\.0 megapixels, above the limit of 64 MP"):
        load_image(data, name="huge.png")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


def test_source_file_is_not_modified(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "eye.png"
    path.write_bytes(_encode(Image.fromarray(rgb), "PNG"))
    before = path.read_bytes()
    load_image(path, min_side=10)
    assert path.read_bytes() == before
