"""Pack what training needs for a machine that lacks the photographs (a rented GPU with a small upload).

``python -m training.remote pack --out gpu`` writes, from the local IDRiD folder and training cache:

    <out>/data/        the IDRiD layout with labels, extras and *stand-in* image files: each holds the
                       sha256 of the real photograph, so byte-identical duplicates still group together
                       in ``workbench.io.splits`` and no image leaves this machine through it
    <out>/cache/       the prepared crops re-encoded as JPEG (quality per part, below), masks, the lesion
                       guides and teacher logits; index files point at the JPEGs
    <out>/lite0_imagenet_fp16.safetensors   the offline ImageNet weights (``models.pretrained``)

On the remote machine ``DRWB_TRUST_CACHE=1`` makes ``training.prepare`` use the cache as it is, and
``DRWB_LITE0_WEIGHTS`` points the ImageNet init at the packed weights; ``training/gpu_jobs.sh`` runs
every training job there. The bundle stays out of git (``.git/info/exclude``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2

from models.hashing import file_sha256
from models.pretrained import export_lite0

__all__ = ["pack"]

# cache folder -> JPEG quality of its re-encoded crops (segmentation_train_512: unlabelled images only)
_QUALITY = {"grading_train_512": 90, "segmentation_train_512": 90, "segmentation_train_2048": 88}


def _stand_ins(data: Path, out: Path) -> None:
    grading = Path("B. Disease Grading")
    for path in sorted((data / grading).rglob("*")):
        target = out / path.relative_to(data)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix.lower() == ".jpg":
            target.write_text(file_sha256(path))
        else:
            shutil.copy2(path, target)
    shutil.copytree(data / "extras", out / "extras", dirs_exist_ok=True)


def _jpeg_cache(source: Path, target: Path, quality: int, keep: set[str] | None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    index = json.loads((source / "index.json").read_text())
    for entry in index:
        if keep is not None and entry["name"] not in keep:
            continue
        image = cv2.imread(str(source / entry["file"]), cv2.IMREAD_COLOR)
        entry["file"] = f"{entry['name']}.jpg"
        cv2.imwrite(str(target / entry["file"]), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        masks = source / f"{entry['name']}.masks.npz"
        if masks.is_file():
            shutil.copy2(masks, target / masks.name)
    (target / "index.json").write_text(json.dumps(index, indent=1))


def pack(data: Path, cache: Path, out: Path, seg_only: set[str], extras: list[Path]) -> Path:
    """Write the bundle (see the module docstring); ``extras`` (guides, teacher) go to its cache."""
    out.mkdir(parents=True, exist_ok=True)
    _stand_ins(data, out / "data")
    for part, quality in _QUALITY.items():
        keep = seg_only if part == "segmentation_train_512" else None
        _jpeg_cache(cache / part, out / "cache" / part, quality, keep)
    for path in extras:
        shutil.copy2(path, out / "cache" / path.name)
    export_lite0(str(out / "lite0_imagenet_fp16.safetensors"))
    return out


def main() -> None:
    from training.guides import seg_to_grading

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["pack"])
    parser.add_argument("--data", default="../shared/data/idrid-lite")
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--out", default="gpu")
    parser.add_argument("--guides", default="cache/guides_512.npz")
    parser.add_argument("--teacher", default="cache/teacher_lite0_cv5.npz")
    args = parser.parse_args()
    data = Path(args.data)
    index = json.loads((Path(args.cache) / "segmentation_train_512" / "index.json").read_text())
    seg_only = {e["name"] for e in index} - set(seg_to_grading(data))
    guides, teacher = Path(args.guides), Path(args.teacher)
    if not guides.is_file():
        raise SystemExit(f"{guides} is missing: run `drwb prepare-guides` first (attention needs it)")
    # the cached teacher logits serve --teacher runs only; the job script's students use online teachers
    extras = [guides] + ([teacher] if teacher.is_file() else [])
    print(pack(data, Path(args.cache), Path(args.out), seg_only, extras))


if __name__ == "__main__":
    main()
