"""Prepared cache: decode, field-of-view crop and resize every IDRiD image once.

An epoch must never re-decode a 4288x2848 JPEG. ``prepare`` reads an IDRiD folder through
``workbench.io.idrid`` and writes, per part and resolution:

    <out>/<part>_<size>/index.json       one entry per image: labels, centres in crop pixels, transform
    <out>/<part>_<size>/<name>.png       the (size, size) RGB crop, exactly as models.preprocess makes it
    <out>/<part>_<size>/<name>.masks.npz segmentation only: uint8 (5, size, size) area fractions x 255,
                                         plus an ``annotated`` flag per lesion (no pickles)

Masks are resampled with area averaging and kept soft, so that a 3-pixel microaneurysm at 4288 px is
still a visible, if faint, target at 1024 px. The cache is keyed by the source file's size and mtime, so
re-running skips what is already there.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.constants import LESION_CODES
from models.preprocess import crop_to_fov
from workbench.io.idrid import IDRiD, load_mask
from workbench.io.image_io import load_image

__all__ = ["CacheEntry", "PART_SIZES", "load_index", "prepare"]

log = logging.getLogger(__name__)

# Default resolutions per part: grading and localization at 512, segmentation at 1024 (lesions are small).
PART_SIZES: dict[str, int] = {"grading": 512, "localization": 512, "segmentation": 1024}


@dataclass(frozen=True)
class CacheEntry:
    """One cached image. Centres are in crop pixels; ``matrix`` maps original pixels to crop pixels."""

    name: str
    file: str
    source: str
    source_stamp: str
    original_size: tuple[int, int]
    matrix: tuple[tuple[float, ...], ...]
    dr_grade: int | None = None
    dme_grade: int | None = None
    od_xy: tuple[float, float] | None = None
    fovea_xy: tuple[float, float] | None = None
    annotated: tuple[str, ...] = ()


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{int(stat.st_mtime)}"


def _prepare_one(job: tuple[str, str, dict, Path, int]) -> dict:
    part, name, record, folder, size = job
    source = Path(record["image_path"])
    image = load_image(source, min_side=size)
    crop, transform, _ = crop_to_fov(image.rgb, size, image.original_size)
    cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    entry = {
        "name": name,
        "file": f"{name}.png",
        "source": str(source),
        "source_stamp": _stamp(source),
        "original_size": list(image.original_size),
        "matrix": [list(row) for row in transform.matrix],
        "dr_grade": record.get("dr_grade"),
        "dme_grade": record.get("dme_grade"),
        "annotated": [],
    }
    for key in ("od_xy", "fovea_xy"):
        if record.get(key) is not None:
            entry[key] = [float(v) for v in transform.to_crop(np.asarray(record[key]))[0]]
    if part == "segmentation":
        stack = np.zeros((len(LESION_CODES), size, size), dtype=np.uint8)
        for channel, code in enumerate(LESION_CODES):
            path = record["mask_paths"].get(code)
            if path is None:
                continue
            fraction = transform.warp_to_crop(load_mask(Path(path)))
            stack[channel] = np.clip(np.rint(fraction * 255), 0, 255).astype(np.uint8)
            entry["annotated"].append(code)
        np.savez_compressed(folder / f"{name}.masks.npz", masks=stack, annotated=np.array(entry["annotated"]))
    return entry


def _records(dataset: IDRiD, part: str, split: str) -> list[tuple[str, dict]]:
    if part == "grading":
        return [
            (r.name, {"image_path": str(r.image_path), "dr_grade": r.dr_grade, "dme_grade": r.dme_grade})
            for r in dataset.grading(split)
        ]
    if part == "localization":
        return [
            (r.name, {"image_path": str(r.image_path), "od_xy": r.od_xy, "fovea_xy": r.fovea_xy})
            for r in dataset.localization(split)
        ]
    if part == "segmentation":
        return [
            (
                r.name,
                {
                    "image_path": str(r.image_path),
                    "mask_paths": {k: (str(v) if v else None) for k, v in r.mask_paths.items()},
                },
            )
            for r in dataset.segmentation(split)
        ]
    raise ValueError(f"unknown part {part!r}; valid parts: {', '.join(PART_SIZES)}")


def prepare(
    data: Path, out: Path, part: str, split: str = "train", size: int | None = None, workers: int = 2
) -> Path:
    """Build (or bring up to date) the cache of one part; returns the cache folder."""
    size = size or PART_SIZES[part]
    folder = Path(out) / f"{part}_{split}_{size}"
    index_path = folder / "index.json"
    if os.environ.get("DRWB_TRUST_CACHE") == "1" and index_path.is_file():
        # a machine that holds the prepared cache but not the photographs (a rented GPU): no re-check
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    existing = {e["name"]: e for e in json.loads(index_path.read_text())} if index_path.is_file() else {}
    records = _records(IDRiD(data), part, split)
    jobs, entries = [], {}
    for name, record in records:
        old = existing.get(name)
        if (
            old
            and old["source_stamp"] == _stamp(Path(record["image_path"]))
            and (folder / old["file"]).is_file()
        ):
            entries[name] = old
        else:
            jobs.append((part, name, record, folder, size))
    log.info("%s/%s at %d px: %d cached, %d to prepare", part, split, size, len(entries), len(jobs))
    if jobs:
        with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            for entry in pool.map(_prepare_one, jobs, chunksize=4):
                entries[entry["name"]] = entry
    ordered = [entries[name] for name, _ in records]
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ordered, indent=1))
    tmp.replace(index_path)
    return folder


def load_index(folder: Path) -> list[CacheEntry]:
    """Read a cache index as ``CacheEntry`` objects."""
    raw = json.loads((Path(folder) / "index.json").read_text())
    fields = set(CacheEntry.__dataclass_fields__)
    out = []
    for item in raw:
        values = {k: v for k, v in item.items() if k in fields}
        for key in ("original_size", "od_xy", "fovea_xy", "annotated"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        values["matrix"] = tuple(tuple(row) for row in values["matrix"])
        out.append(CacheEntry(**values))
    return out
