"""DICOM photographs: read by content into RGB uint8 like any other upload; every way a DICOM file can be
unusable has its own clear error; patient fields never reach a result."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.io.image_io import (
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedImageError,
    is_image_file,
    load_image,
)
from workbench.io.synthetic import dicom_bytes, make_fundus
from workbench.reports.batch import expand_inputs


@pytest.fixture(scope="module")
def fundus() -> np.ndarray:
    return make_fundus(3, size=(120, 180), dr_grade=2).image


def test_uncompressed_rgb_is_read_exactly(fundus: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "IM000001"  # a bare export name: recognised by content, not by suffix
    path.write_bytes(dicom_bytes(fundus))
    loaded = load_image(path)
    assert loaded.source_format == "DICOM" and loaded.source_mode.startswith("RGB 8-bit")
    assert loaded.original_size == (120, 180) and loaded.name == "IM000001"
    assert np.array_equal(loaded.rgb, fundus)


def test_jpeg_baseline_ycbcr_arrives_as_rgb(fundus: np.ndarray) -> None:
    """The usual camera export: JPEG Baseline, YCbCr 4:2:2. Decoded as a JPEG viewer would (not left in
    YCbCr, which would turn a fundus green-purple)."""
    loaded = load_image(dicom_bytes(fundus, jpeg=True))
    assert loaded.source_mode.startswith("YBR_FULL_422 8-bit, JPEG Baseline")
    buffer = io.BytesIO()
    Image.fromarray(fundus).save(buffer, "JPEG", quality=95, subsampling=1)
    as_jpeg = np.asarray(Image.open(buffer).convert("RGB")).astype(int)
    assert np.abs(loaded.rgb.astype(int) - as_jpeg).max() <= 2
    assert np.abs(loaded.rgb.astype(int) - fundus.astype(int)).mean() < 4
    # the red channel dominates a fundus; a YCbCr image read as RGB would put luma there
    assert loaded.rgb[..., 0].mean() > loaded.rgb[..., 2].mean() + 20


def test_high_bit_depth_is_scaled_by_the_declared_range_not_the_brightest_pixel() -> None:
    values = np.array([[0, 2048, 4095, 1024]], dtype=np.uint16)  # 12 bits stored in 16
    loaded = load_image(dicom_bytes(values, bits_stored=12))
    assert loaded.rgb[0, :, 1].tolist() == [0, 128, 255, 64]
    dark = load_image(dicom_bytes(np.full((4, 4), 1024, np.uint16), bits_stored=12))
    assert int(dark.rgb.max()) == 64  # a dark image stays dark


def test_monochrome1_is_inverted() -> None:
    values = np.array([[0, 255]], dtype=np.uint8)
    loaded = load_image(dicom_bytes(values, photometric="MONOCHROME1"))
    assert loaded.rgb[0, :, 0].tolist() == [255, 0]


def test_a_multi_frame_file_is_refused_with_its_frame_count(fundus: np.ndarray) -> None:
    with pytest.raises(UnsupportedImageError, match="multi-frame DICOM \\(2 frames\\)"):
        load_image(dicom_bytes(fundus, frames=2), name="stereo.dcm")


def test_a_dicom_without_pixels_is_not_an_image(fundus: np.ndarray) -> None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(fundus)))
    del ds.PixelData
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(NotAnImageError, match="report.dcm: a DICOM file without an image"):
        load_image(out.getvalue(), name="report.dcm")


def test_a_cut_file_is_named_truncated(fundus: np.ndarray) -> None:
    data = dicom_bytes(fundus)
    with pytest.raises(TruncatedImageError, match="cut.dcm: the DICOM .*truncated or corrupt"):
        load_image(data[: len(data) // 2], name="cut.dcm")


def test_too_many_pixels_are_refused_from_the_header(fundus: np.ndarray, monkeypatch) -> None:
    import pydicom.dataset

    def never(*_args, **_kwargs):
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(never))
    with pytest.raises(ImageTooLargeError, match="big.dcm: 180x120 is 0.0 megapixels"):
        load_image(dicom_bytes(fundus), max_pixels=10_000, name="big.dcm")


def test_the_file_is_only_read(fundus: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "eye.dcm"
    data = dicom_bytes(fundus, jpeg=True)
    path.write_bytes(data)
    load_image(path)
    assert path.read_bytes() == data


def test_folders_offer_dicom_by_suffix_or_by_content(fundus: np.ndarray, tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(dicom_bytes(fundus))
    (tmp_path / "IM000002").write_bytes(dicom_bytes(fundus, jpeg=True))
    (tmp_path / "README").write_text("not an image, no suffix")
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(fundus).save(tmp_path / "b.png")
    assert [p.name for p in expand_inputs([str(tmp_path)])] == ["IM000002", "a.dcm", "b.png"]
    assert not is_image_file(tmp_path / "README") and is_image_file(tmp_path / "IM000002")


def test_an_audit_zip_offers_dicom_members_by_suffix_or_by_content(
    fundus: np.ndarray, tmp_path: Path
) -> None:
    import zipfile

    from workbench.ui.audit_tab import _unpack

    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("export/a.dcm", dicom_bytes(fundus))
        zf.writestr("export/IM000003", dicom_bytes(fundus, jpeg=True))
        zf.writestr("export/README", "no suffix, not DICOM")
    into = tmp_path / "unpacked"
    into.mkdir()
    folder = _unpack(str(archive), into)
    assert sorted(p.name for p in folder.iterdir()) == ["IM000003", "a.dcm"]
    assert load_image(folder / "IM000003").source_format == "DICOM"


def _edited(data: bytes, **tags) -> bytes:
    """The DICOM file ``data`` with some elements set (None deletes one), written back."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        elif keyword == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
        else:
            setattr(ds, keyword, value)
            if keyword.endswith("LookupTableDescriptor"):
                ds[keyword].VR = "US"  # "US or SS" in the dictionary; unsigned entries here
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_jpeg_export_cut_short_is_named_truncated_not_imageless(fundus: np.ndarray) -> None:
    """An interrupted copy: pydicom quietly returns an empty dataset for a cut encapsulated file."""
    data = dicom_bytes(fundus, jpeg=True)
    with pytest.raises(TruncatedImageError, match="cut.dcm: the DICOM file is truncated"):
        load_image(data[:-10], name="cut.dcm")


def test_a_garbled_jpeg_inside_is_corrupt_not_an_unsupported_compression(fundus: np.ndarray) -> None:
    from pydicom.encaps import encapsulate

    data = _edited(dicom_bytes(fundus, jpeg=True), PixelData=encapsulate([b"\xff\xd8\xff\xdb garbage" * 20]))
    with pytest.raises(TruncatedImageError, match="pixel data is truncated or corrupt"):
        load_image(data, name="garbled.dcm")


def test_a_compression_without_a_decoder_here_is_named(fundus: np.ndarray) -> None:
    from pydicom.uid import JPEGLossless

    data = _edited(dicom_bytes(fundus, jpeg=True), TransferSyntaxUID=JPEGLossless)
    with pytest.raises(UnsupportedImageError, match="compressed as JPEG Lossless.*cannot decode"):
        load_image(data, name="lossless.dcm")


def test_a_jpeg_larger_than_its_header_says_is_refused_before_decoding(fundus: np.ndarray) -> None:
    data = _edited(dicom_bytes(fundus, jpeg=True), Rows=10, Columns=10)  # the JPEG inside is 180x120
    with pytest.raises(ImageTooLargeError, match="180x120"):
        load_image(data, max_pixels=5_000, name="bomb.dcm")


def test_a_dcm_file_without_the_preamble_is_read(fundus: np.ndarray) -> None:
    data = dicom_bytes(fundus)
    bare = data[132:]  # no 128-byte preamble, no DICM marker: meta information first
    assert np.array_equal(load_image(bare, name="bare.dcm").rgb, fundus)


def test_native_ycbcr_planar_rle_signed_and_palette_variants() -> None:
    from pydicom.pixels import convert_color_space
    from pydicom.uid import RLELossless

    rgb = make_fundus(5, size=(48, 64)).image
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    loaded = load_image(dicom_bytes(ybr, photometric="YBR_FULL"))
    assert np.abs(loaded.rgb.astype(int) - rgb.astype(int)).max() <= 2
    planar = _edited(dicom_bytes(rgb), PlanarConfiguration=1, PixelData=rgb.transpose(2, 0, 1).tobytes())
    assert np.array_equal(load_image(planar).rgb, rgb)
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(rgb)))
    ds.compress(RLELossless)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    loaded = load_image(out.getvalue())
    assert loaded.source_mode.endswith("RLE Lossless") and np.array_equal(loaded.rgb, rgb)
    signed = np.array([[-128, 0, 127]], dtype=np.int8)
    data = _edited(dicom_bytes(signed.view(np.uint8)), PixelRepresentation=1)
    assert load_image(data).rgb[0, :, 0].tolist() == [0, 128, 255]
    lut = np.linspace(0, 65535, 256).astype(np.uint16)
    palette = _edited(
        dicom_bytes(np.array([[0, 255, 128]], np.uint8), photometric="PALETTE COLOR"),
        RedPaletteColorLookupTableDescriptor=[256, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
        BluePaletteColorLookupTableDescriptor=[256, 0, 16],
        RedPaletteColorLookupTableData=lut.tobytes(),
        GreenPaletteColorLookupTableData=np.zeros(256, np.uint16).tobytes(),
        BluePaletteColorLookupTableData=lut[::-1].copy().tobytes(),
    )
    assert load_image(palette).rgb[0].tolist() == [[0, 0, 255], [255, 0, 0], [128, 0, 127]]


def test_uid_names_are_offered_and_dicomdir_and_unreadable_files_are_not(
    fundus: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = tmp_path / "1.2.826.0.1.3680043.8.498.12345"  # storescp names files by UID: suffix ".12345"
    uid.write_bytes(dicom_bytes(fundus))
    (tmp_path / "DICOMDIR").write_bytes(dicom_bytes(fundus))  # a stand-in: offered by name never
    locked = tmp_path / "IM000009"
    locked.write_bytes(dicom_bytes(fundus))
    real_open = Path.open

    def refuse(self: Path, *args, **kwargs):
        if self.name == "IM000009":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    assert [p.name for p in expand_inputs([str(tmp_path)])] == [uid.name]


def test_no_patient_field_reaches_what_is_loaded_or_any_message(fundus: np.ndarray) -> None:
    loaded = load_image(dicom_bytes(fundus, jpeg=True), name="eye.dcm")
    text = f"{loaded.name} {loaded.source_format} {loaded.source_mode}"
    messages = []
    for bad in (
        dicom_bytes(fundus, frames=2),
        dicom_bytes(fundus)[:-100],
        dicom_bytes(fundus, jpeg=True)[:-10],
    ):
        with pytest.raises(Exception) as error:
            load_image(bad, name="x.dcm")
        messages.append(str(error.value))
    assert messages and not any(word in " ".join([text, *messages]) for word in ("Synthetic", "SYN-0001"))


def test_the_report_says_what_the_file_held(tiny_workbench) -> None:
    from workbench.reports.html_page import report_html
    from workbench.reports.report import analysis_to_dict

    pixels = make_fundus(4, size=(356, 536), dr_grade=3).image
    data = analysis_to_dict(tiny_workbench.analyze(load_image(dicom_bytes(pixels, jpeg=True), name="IM7")))
    assert data["source"] == {"format": "DICOM", "mode": "YBR_FULL_422 8-bit, JPEG Baseline (Process 1)"}
    page = report_html(data, {})
    assert "<p id='source'>DICOM (YBR_FULL_422 8-bit, JPEG Baseline (Process 1)), 536 x 356 px</p>" in page
    assert "Synthetic" not in page + str(data)


def test_report_folders_never_let_one_input_overwrite_another() -> None:
    from workbench.reports.batch import report_folders

    paths = [Path(p) for p in ("a/eye.dcm", "a/eye.png", "b/x.png", "c/x.png", "d/y.jpg", "e/x.png-1.tif")]
    assert report_folders(paths) == ["eye.dcm", "eye.png", "x.png-1", "x.png-2", "y", "x.png-1-2"]
    assert report_folders([Path("only.png")]) == ["only"]  # a unique stem keeps the usual folder


def test_a_dicom_and_a_png_of_the_same_name_get_a_report_each(tiny_workbench, tmp_path: Path) -> None:
    """A camera export beside its PNG conversion: both analysed, neither report lost (the Batch tab's zip
    held one folder before)."""
    from workbench.reports.batch import analyze_files

    pixels = make_fundus(4, size=(356, 536), dr_grade=2).image
    photos = tmp_path / "in"
    photos.mkdir()
    (photos / "eye.dcm").write_bytes(dicom_bytes(pixels, jpeg=True))
    Image.fromarray(pixels).save(photos / "eye.png")
    rows = analyze_files(tiny_workbench, [str(photos)], tmp_path / "out", score=False)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    import json

    formats = {
        folder: json.loads((tmp_path / "out" / folder / "report.json").read_text())["source"]["format"]
        for folder in ("eye.dcm", "eye.png")
    }
    assert formats == {"eye.dcm": "DICOM", "eye.png": "PNG"}
    assert sorted(r["report"] for r in rows) == sorted(
        str(tmp_path / "out" / f / "report.html") for f in ("eye.dcm", "eye.png")
    )
