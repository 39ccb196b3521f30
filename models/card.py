"""Model cards: everything needed to rebuild, feed and interpret a model, saved as JSON beside its weights.

``ModelCard`` plays the part of timm's ``PretrainedCfg`` plus the init arguments smp saves: input size,
normalisation and label names always come from the card, never from the UI. Training facts (data,
command, commit, validation metrics) travel in ``training`` so a shipped model says how to reproduce it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["ModelCard"]


@dataclass(frozen=True)
class ModelCard:
    """Describes one model.

    Attributes:
        name: registry name of the builder (``models.registry``).
        arch: family ("grader", "segmenter", "localizer").
        encoder: timm backbone name.
        num_classes: outputs of the main head (grader: DR grades; segmenter: lesion channels).
        input_size: square input side in pixels (the field-of-view crop).
        mean, std: per-channel RGB normalisation of [0, 1] pixels.
        label_names: names of the outputs, in order.
        target_layer: dotted path of the layer Grad-CAM hooks (``model.get_submodule``).
        weights: file name of the safetensors weights beside the card ("" for random init).
        sha256: hash of the weights file, checked at load time.
        task: short description; preprocessing: how pixels were prepared.
        training: data, command, commit, epochs, validation metrics.
        extra: builder arguments beyond the common ones (e.g. ``dme_classes``).
    """

    name: str
    arch: str
    encoder: str
    num_classes: int
    input_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    label_names: tuple[str, ...] = ()
    target_layer: str = ""
    weights: str = ""
    sha256: str = ""
    task: str = ""
    preprocessing: str = (
        "field-of-view square crop (models.preprocess.crop_to_fov), resize, RGB [0,1], mean/std"
    )
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        values = dict(data)
        for key in ("mean", "std", "label_names"):
            if key in values:
                values[key] = tuple(values[key])
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model card has unknown fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def with_updates(self, **changes: Any) -> ModelCard:
        return replace(self, **changes)
