"""DICOM fundus photographs as RGB uint8.

Screening programmes and fundus cameras export Ophthalmic Photography (modality OP) as DICOM: one frame,
RGB or YCbCr, uncompressed or JPEG-compressed inside the file. ``image_io.load_image`` recognises a DICOM
file by its content (the ``DICM`` marker after the 128-byte preamble of a DICOM Part 10 file), whatever
its name, and hands it here. Only the pixels and the tags that say how to read them are used: no patient
or study field is read into a result, so a report made from a DICOM file names the file and nothing else.

What is refused, each with a message naming the file and the problem: a DICOM file that holds no image
(a structured report, an encapsulated PDF), several frames (a stereo pair or a series: export the frame to
grade), more pixels than the caller's limit (checked from the header, before decoding), pixel data
compressed in a syntax this installation cannot decode, and a file cut short.
"""

from __future__ import annotations

import io

import numpy as np

from workbench.io.errors import NotAnImageError, TruncatedImageError, UnsupportedImageError, check_size

__all__ = ["MAGIC_OFFSET", "SUFFIXES", "decode", "is_dicom"]

MAGIC_OFFSET = 128  # a Part 10 file: 128-byte preamble, then b"DICM", then the file meta information
SUFFIXES = (".dcm", ".dicom")
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) Pixel Data, little endian


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file (the ``DICM`` marker after the preamble)."""
    return data[MAGIC_OFFSET : MAGIC_OFFSET + 4] == b"DICM"


def _to_uint8(values: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Scale stored values to 0..255 by the range the header declares (not by the image's own maximum,
    so a dark photograph stays dark)."""
    if values.dtype == np.uint8:
        return values
    if np.issubdtype(values.dtype, np.floating):
        top = 1.0 if float(np.nanmax(values, initial=0.0)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(values) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    bits = max(1, min(int(bits_stored), 8 * values.dtype.itemsize))
    shifted = values.astype(np.float64) + (2.0 ** (bits - 1) if signed else 0.0)
    return np.clip(shifted / (2.0**bits - 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _header(ds, name: str) -> tuple[int, int, int, int, bool, str]:
    """(frames, rows, columns, bits stored, signed, photometric interpretation) from the header; a value
    that cannot be read is a corrupt file, not a crash."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    except Exception as exc:  # noqa: BLE001 (a garbled element raises ValueError, NotImplementedError...)
        raise TruncatedImageError(f"{name}: the DICOM header is corrupt ({exc})") from exc
    return frames, rows, columns, bits, signed, photometric


def _check_encoded_size(ds, name: str, max_pixels: int) -> None:
    """A compressed frame says its own size; refuse it before decoding when it exceeds the limit (the
    header's Rows and Columns need not agree with what the JPEG inside holds). Only called for a
    compressed transfer syntax."""
    from PIL import Image, UnidentifiedImageError
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        with Image.open(io.BytesIO(frame)) as encoded:  # reads the header only
            width, height = encoded.size
    except (StopIteration, UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return  # not a format PIL reads the size of; the decoder's own errors follow
    check_size(name, width, height, max_pixels)


def decode(
    data: bytes, name: str, max_pixels: int, force: bool = False
) -> tuple[np.ndarray, str, str | None]:
    """Decode a single-frame DICOM image.

    Args:
        force: read a file without the Part 10 preamble (one named ``*.dcm``), as pydicom's ``force``.

    Returns:
        (rgb, mode, laterality): (h, w, 3) uint8 RGB pixels, a description of what the file held, e.g.
        ``"YBR_FULL_422 8-bit, JPEG Baseline (Process 1)"``, and the eye the file names with the tag that
        names it (``"ImageLaterality R"``, else the series' ``"Laterality L"``), or None ("B", "U", absent).

    Raises:
        NotAnImageError, UnsupportedImageError, ImageTooLargeError, TruncatedImageError: each with a
        message naming the file and the problem.
    """
    import pydicom  # imported here: only DICOM files pay for it
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except InvalidDicomError as exc:
        raise NotAnImageError(f"{name}: not a readable DICOM file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 (pydicom raises many kinds on a cut or corrupt header)
        raise TruncatedImageError(f"{name}: the DICOM file is truncated or corrupt ({exc})") from exc
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if len(ds) == 0 or _PIXEL_DATA_TAG in data:  # pydicom stops quietly where a cut file ends
            raise TruncatedImageError(f"{name}: the DICOM file is truncated (it ends inside the image)")
        if "DirectoryRecordSequence" in ds:
            raise NotAnImageError(
                f"{name}: a DICOMDIR (the index of a DICOM media export); give the image files it lists"
            )
        kind = getattr(ds.get("SOPClassUID"), "name", None) or "no SOP class"
        raise NotAnImageError(f"{name}: a DICOM file without an image ({kind}); upload a fundus photograph")
    frames, rows, columns, bits, signed, photometric = _header(ds, name)
    if frames > 1:
        raise UnsupportedImageError(
            f"{name}: a multi-frame DICOM ({frames} frames); export the one frame to grade as its own file"
        )
    check_size(name, columns, rows, max_pixels)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    syntax_name = getattr(syntax, "name", None) or "an unknown transfer syntax"
    if syntax is not None and syntax.is_compressed:
        _check_encoded_size(ds, name, max_pixels)
    try:
        decodable = syntax is None or not syntax.is_compressed or get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):  # no decoder is known for this syntax at all
        decodable = False
    if not decodable:
        raise UnsupportedImageError(
            f"{name}: DICOM pixel data compressed as {syntax_name}, which this installation cannot decode; "
            "export it uncompressed or as JPEG Baseline"
        )
    try:
        values = ds.pixel_array  # YCbCr (JPEG's and the native YBR_FULL forms) arrives as RGB
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            values = apply_color_lut(values, ds)
            bits, signed = 8 * values.dtype.itemsize, False
    except Exception as exc:  # noqa: BLE001 (cut or garbled pixel data: RuntimeError, ValueError, EOFError...)
        raise TruncatedImageError(f"{name}: the DICOM pixel data is truncated or corrupt ({exc})") from exc
    if values.ndim == 2:
        gray = _to_uint8(values, bits, signed)
        if photometric == "MONOCHROME1":  # 0 is white
            gray = 255 - gray
        rgb = np.repeat(gray[..., None], 3, axis=2)
    elif values.ndim == 3 and values.shape[-1] == 3:
        rgb = _to_uint8(values, bits, signed)
    else:
        raise UnsupportedImageError(f"{name}: DICOM pixel data of shape {values.shape} is not a photograph")
    return np.ascontiguousarray(rgb), f"{photometric} {bits}-bit, {syntax_name}", _laterality(ds)


def _laterality(ds) -> str | None:
    """The eye the file names: the image's own tag first, then the series'; only R and L count."""
    for tag in ("ImageLaterality", "Laterality"):
        value = str(ds.get(tag) or "").strip().upper()
        if value in ("R", "L"):
            return f"{tag} {value}"
    return None
