"""Synthetic fundus photographs with exact ground truth: the project's own pictures for tests and demos.

No patient image ships with DR Workbench. Instead this module draws, deterministically from a seed, a
fundus field on black with a vignette, a branching vessel tree from the optic disc, a darker fovea and
lesions of each IDRiD type at known places. It returns the masks, both centres and a DR grade / DME risk
that follow from what was drawn, using the IDRiD rules:

- grade 0: no lesion; 1: microaneurysms only; 2: MA + haemorrhages + exudates; 3: many haemorrhages in
  every quadrant; 4: grade 3 plus neovascular tufts near the disc.
- DME 0: no hard exudate; 1: exudates only beyond one disc diameter from the fovea; 2: within it.

``write_idrid_folder`` lays the samples out as a small IDRiD-layout folder (JPEGs, 1-bit palette TIFF
masks, CSVs with trailing empty columns), so every reader and evaluation test runs without real data.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from models.constants import LESION_CODES, lesion_by_code

__all__ = ["SyntheticFundus", "dicom_bytes", "make_fundus", "write_idrid_folder"]


@dataclass(frozen=True)
class SyntheticFundus:
    """A drawn fundus and its ground truth, all in the image's pixel frame.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: lesion code -> boolean (H, W) mask, for every code in ``LESION_CODES``.
        od_xy, fovea_xy: optic-disc and fovea centres (x, y).
        od_radius: optic-disc radius in pixels.
        fov_xy, fov_radius: the circular field of view.
        dr_grade, dme_grade: labels consistent with the lesions drawn.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    od_xy: tuple[float, float]
    fovea_xy: tuple[float, float]
    od_radius: float
    fov_xy: tuple[float, float]
    fov_radius: float
    dr_grade: int
    dme_grade: int


def _draw_vessels(canvas: np.ndarray, rng: np.random.Generator, start: np.ndarray, scale: float) -> None:
    """Four arcades leaving the disc, each branching twice, drawn darker red on the background."""
    for base_angle in (-0.6, 0.6, np.pi - 0.6, np.pi + 0.6):
        stack = [(start.astype(float), base_angle + rng.normal(0, 0.15), 9.0 * scale, 0)]
        while stack:
            point, angle, width, depth = stack.pop()
            for _ in range(14):
                angle += rng.normal(0, 0.12)
                nxt = point + 18 * scale * np.array([np.cos(angle), np.sin(angle)])
                p0 = (int(point[0]), int(point[1]))
                p1 = (int(nxt[0]), int(nxt[1]))
                cv2.line(canvas, p0, p1, (120, 20, 15), max(1, int(width)), cv2.LINE_AA)
                point = nxt
            if depth < 2:
                for turn in (-0.5, 0.5):
                    stack.append((point, angle + turn, width * 0.7, depth + 1))


def _blob(mask: np.ndarray, centre: tuple[int, int], radius: int, rng: np.random.Generator) -> None:
    axes = (max(1, radius), max(1, int(radius * rng.uniform(0.6, 1.0))))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)


def make_fundus(
    seed: int = 0,
    size: tuple[int, int] = (712, 1072),
    dr_grade: int | None = None,
    dme_grade: int | None = None,
) -> SyntheticFundus:
    """Draw one synthetic fundus.

    Args:
        seed: everything (positions, grade when not given) follows from it.
        size: (H, W); the field is cut at top and bottom like IDRiD's Kowa camera when W > H.
        dr_grade: 0-4, random when None.
        dme_grade: 0-2, random when None; forced to 0 for dr_grade 0 and 1 (no exudates drawn there).
    """
    rng = np.random.default_rng(seed)
    height, width = size
    grade = int(rng.integers(0, 5)) if dr_grade is None else int(dr_grade)
    dme = 0 if grade < 2 else (int(rng.integers(0, 3)) if dme_grade is None else int(dme_grade))
    scale = min(height, width) / 712
    cx, cy = width / 2 + rng.uniform(-0.03, 0.03) * width, height / 2
    fov_r = min(0.40 * width, 0.60 * height)  # IDRiD proportions: wide field cut at top and bottom
    side = 1 if rng.random() < 0.5 else -1  # left or right eye
    od = np.array([cx + side * 0.55 * fov_r, cy + rng.uniform(-0.08, 0.08) * fov_r])
    od_r = 0.13 * fov_r
    fovea = np.array([cx - side * 0.2 * fov_r, cy + rng.uniform(-0.03, 0.05) * fov_r])

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / fov_r
    field = dist <= 1.0
    base = np.array([200, 95, 45], dtype=np.float32) * rng.uniform(0.85, 1.1)
    vignette = np.clip(1.05 - 0.35 * dist**2, 0, 1)[..., None]
    fovea_shadow = 1 - 0.35 * np.exp(-((xx - fovea[0]) ** 2 + (yy - fovea[1]) ** 2) / (2 * (1.3 * od_r) ** 2))
    image = base * vignette * fovea_shadow[..., None]
    texture = cv2.GaussianBlur(rng.normal(0, 6, (height, width)).astype(np.float32), (0, 0), 3)
    image = np.clip(image + texture[..., None], 0, 255).astype(np.uint8)

    _draw_vessels(image, rng, od, scale)
    od_glow = np.exp(-((xx - od[0]) ** 2 + (yy - od[1]) ** 2) / (2 * od_r**2))
    disc = ((xx - od[0]) ** 2 + (yy - od[1]) ** 2) <= od_r**2
    image = np.clip(image + (od_glow[..., None] * np.array([60, 110, 90]) * 1.2), 0, 255).astype(np.uint8)

    masks = {code: np.zeros((height, width), dtype=np.uint8) for code in LESION_CODES}
    masks["OD"][disc] = 1

    def place(min_fovea: float = 0.0, max_fovea: float = 10.0) -> tuple[int, int]:
        for _ in range(500):
            r, t = fov_r * np.sqrt(rng.uniform(0.0, 0.8)), rng.uniform(0, 2 * np.pi)
            p = np.array([cx + r * np.cos(t), cy + r * np.sin(t)])
            d_fovea = np.linalg.norm(p - fovea) / (2 * od_r)
            if (
                0 <= p[1] < height
                and np.linalg.norm(p - od) > 1.5 * od_r
                and min_fovea <= d_fovea <= max_fovea
                and field[int(p[1]), int(p[0])]
            ):
                return int(p[0]), int(p[1])
        raise RuntimeError("could not place a lesion; image too small")

    n_ma = {0: 0, 1: 6, 2: 12, 3: 20, 4: 20}[grade]
    n_he = {0: 0, 1: 0, 2: 4, 3: 24, 4: 24}[grade]
    for _ in range(n_ma):
        cv2.circle(masks["MA"], place(), max(1, int(2 * scale)), 1, -1)
    for _ in range(n_he):
        _blob(masks["HE"], place(), int(rng.uniform(5, 12) * scale), rng)
    if dme:
        near, far = (0.0, 0.9) if dme == 2 else (1.3, 10.0)
        for _ in range(8):
            _blob(masks["EX"], place(near, far), int(rng.uniform(3, 7) * scale), rng)
    if grade >= 2:
        for _ in range(2):
            _blob(masks["SE"], place(), int(rng.uniform(10, 16) * scale), rng)

    colours = {"MA": (110, 10, 10), "HE": (100, 5, 10), "EX": (250, 230, 120), "SE": (235, 215, 190)}
    for code, colour in colours.items():
        soft = cv2.GaussianBlur(masks[code].astype(np.float32), (0, 0), 0.8)[..., None]
        image = (image * (1 - soft) + np.array(colour, dtype=np.float32) * soft).astype(np.uint8)
    if grade == 4:
        tufts = np.zeros((height, width), dtype=np.uint8)
        for _ in range(10):
            angle = rng.uniform(0, 2 * np.pi)
            p = od + 1.3 * od_r * np.array([np.cos(angle), np.sin(angle)])
            q = p + 14 * scale * np.array([np.cos(angle + 1.3), np.sin(angle + 1.3)])
            cv2.line(tufts, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), 1, 1, cv2.LINE_AA)
        image[tufts > 0] = (150, 15, 25)
    image[~field] = 0
    bool_masks = {code: (mask > 0) & field for code, mask in masks.items()}
    return SyntheticFundus(
        image=image,
        masks=bool_masks,
        od_xy=(float(od[0]), float(od[1])),
        fovea_xy=(float(fovea[0]), float(fovea[1])),
        od_radius=float(od_r),
        fov_xy=(float(cx), float(cy)),
        fov_radius=float(fov_r),
        dr_grade=grade,
        dme_grade=dme if bool_masks["EX"].any() else 0,
    )


def dicom_bytes(
    pixels: np.ndarray,
    *,
    jpeg: bool = False,
    photometric: str | None = None,
    bits_stored: int | None = None,
    frames: int = 1,
    laterality: str = "R",
) -> bytes:
    """A DICOM Ophthalmic Photography file holding ``pixels``, as a camera or PACS export would write it.

    ``pixels``: (h, w, 3) uint8 RGB, or (h, w) uint8 / uint16 grayscale. ``jpeg`` stores an RGB image as
    JPEG Baseline with YCbCr 4:2:2 (the usual camera export); otherwise the pixels are stored uncompressed
    (``photometric`` overrides the interpretation, e.g. ``"MONOCHROME1"``). ``frames`` > 1 repeats the
    image as a multi-frame file. The patient fields hold an obviously fake name, so a test can check that
    nothing of them reaches a result.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    colour = pixels.ndim == 3
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID, ds.ImageLaterality = (
        "OP",
        "Synthetic^Patient",
        "SYN-0001",
        laterality,
    )
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric or (
        ("YBR_FULL_422" if jpeg else "RGB") if colour else "MONOCHROME2"
    )
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if jpeg:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=95, subsampling=1)  # 1: 4:2:2
        ds.PixelData = encapsulate([buffer.getvalue()] * frames)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes() * frames
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _save_palette_mask(mask: np.ndarray, path: Path) -> None:
    """Write a 1-bit palette TIFF (index 1 = lesion, drawn red), the format of the official masks."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.save(path, compression="tiff_deflate")


def write_idrid_folder(
    root: str | Path,
    n_segmentation: int = 4,
    n_grading: int = 10,
    size: tuple[int, int] = (356, 536),
    seed: int = 0,
) -> Path:
    """Write a small synthetic dataset in the official IDRiD training layout and return its root.

    Segmentation image 2 has no soft-exudate file ("not annotated"); grading images cycle through all
    grades; the last grading image duplicates the first byte for byte (as IDRiD_021/391 do).
    """
    root = Path(root)
    seg_img = root / "A. Segmentation/1. Original Images/a. Training Set"
    seg_gt = root / "A. Segmentation/2. All Segmentation Groundtruths/a. Training Set"
    seg_img.mkdir(parents=True, exist_ok=True)
    for index in range(1, n_segmentation + 1):
        sample = make_fundus(seed * 1000 + index, size=size, dr_grade=2 + index % 3, dme_grade=2)
        Image.fromarray(sample.image).save(seg_img / f"IDRiD_{index:02d}.jpg", quality=92)
        for code in LESION_CODES:
            if code == "SE" and index == 2:
                continue
            folder = seg_gt / lesion_by_code(code).folder
            folder.mkdir(parents=True, exist_ok=True)
            _save_palette_mask(sample.masks[code], folder / f"IDRiD_{index:02d}_{code}.tif")

    grade_img = root / "B. Disease Grading/1. Original Images/a. Training Set"
    loc_img = root / "C. Localization/1. Original Images/a. Training Set"
    grade_gt = root / "B. Disease Grading/2. Groundtruths"
    loc_gt = root / "C. Localization/2. Groundtruths"
    for folder in (
        grade_img,
        loc_img,
        grade_gt,
        loc_gt / "1. Optic Disc Center Location",
        loc_gt / "2. Fovea Center Location",
    ):
        folder.mkdir(parents=True, exist_ok=True)
    labels, od_rows, fovea_rows = [], [], []
    first_bytes = b""
    for index in range(1, n_grading + 1):
        name = f"IDRiD_{index:03d}"
        if index == n_grading and n_grading > 1:
            sample = make_fundus(seed * 1000 + 500 + 1, size=size, dr_grade=0)
            data = first_bytes
        else:
            sample = make_fundus(seed * 1000 + 500 + index, size=size, dr_grade=(index - 1) % 5)
            (grade_img / f"{name}.jpg").write_bytes(b"")
            Image.fromarray(sample.image).save(grade_img / f"{name}.jpg", quality=92)
            data = (grade_img / f"{name}.jpg").read_bytes()
            first_bytes = first_bytes or data
        (grade_img / f"{name}.jpg").write_bytes(data)
        (loc_img / f"{name}.jpg").write_bytes(data)
        labels.append([name, sample.dr_grade, sample.dme_grade] + [""] * 8)
        od_rows.append([name, round(sample.od_xy[0], 2), round(sample.od_xy[1], 2)])
        fovea_rows.append([name, round(sample.fovea_xy[0], 2), round(sample.fovea_xy[1], 2)])
    _write_csv(
        grade_gt / "a. IDRiD_Disease Grading_Training Labels.csv",
        ["Image name", "Retinopathy grade", "Risk of macular edema"] + [""] * 8,
        labels + [[""] * 11],
    )
    _write_csv(
        loc_gt / "1. Optic Disc Center Location/a. IDRiD_OD_Center_Training Set_Markups.csv",
        ["Image No", "X- Coordinate", "Y - Coordinate"],
        od_rows,
    )
    _write_csv(
        loc_gt / "2. Fovea Center Location/a. IDRiD_Fovea_Center_Training Set_Markups.csv",
        ["Image No", "X- Coordinate", "Y - Coordinate"],
        fovea_rows,
    )
    return root


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
