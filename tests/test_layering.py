"""Imports point down: faces -> workbench -> models; training -> workbench, models (STYLE.md section 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"models", "workbench", "training"}
FACES = {"app", "streamlit_app", "drwb"}
# Which project packages each layer may import.
ALLOWED: dict[str, set[str]] = {
    "models": {"models"},
    "workbench": {"models", "workbench"},
    "training": {"models", "workbench", "training"},
    "face": {"models", "workbench", "training"},
}
# Faces do no tensor maths.
FACE_FORBIDDEN_THIRD_PARTY = {"torch", "captum", "pytorch_grad_cam", "timm", "segmentation_models_pytorch"}


def _python_files() -> list[Path]:
    files = [p for p in ROOT.glob("*.py")]
    for package in PROJECT:
        files.extend((ROOT / package).rglob("*.py"))
    return sorted(files)


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else "face"


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    layer = _layer(path)
    roots = _imported_roots(ast.parse(path.read_text(), filename=str(path)))
    forbidden = (roots & (PROJECT | FACES)) - ALLOWED[layer]
    assert not forbidden, f"{path.name} ({layer}) imports {sorted(forbidden)}"
    if layer == "face" or path.name.startswith("ui_"):
        maths = roots & FACE_FORBIDDEN_THIRD_PARTY
        assert not maths, f"{path.name} is a face and must not import {sorted(maths)}"


def test_layering_check_catches_a_bad_import() -> None:
    """The checker itself can fail: models importing workbench is reported."""
    roots = _imported_roots(ast.parse("from workbench.io.idrid import IDRiD\nimport torch"))
    assert (roots & PROJECT) - ALLOWED["models"] == {"workbench"}
