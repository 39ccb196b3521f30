"""What to explain: small callables from a batch of model outputs to one score per image.

Each target also has ``probability(output)``, the same evidence on a [0, 1] scale, which the
faithfulness curves follow so their AUCs compare across targets.

Like pytorch-grad-cam's ``utils/model_targets.py``, a target turns the model output into the scalar whose
evidence we want. Ours take the *batched* output, (B, 8) grader logits or (B, 5, H, W) segmenter logits,
and return (B,); ``per_sample`` adapts one to grad-cam's per-sample calling convention.

- ``GradeTarget(g)``: logit of DR grade g.
- ``ReferableTarget()``: log of the summed probability of grades >= 2 (referable DR), so the evidence is
  for "referable" as a whole and not for one grade.
- ``DMETarget(d)``: logit of DME risk d.
- ``LesionTarget(code, mask)``: summed logit of a lesion channel inside ``mask`` (everywhere when None),
  as grad-cam's ``SemanticSegmentationTarget``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from models.constants import DME_NAMES, DR_GRADE_NAMES, LESION_CODES, REFERABLE_MIN_GRADE, lesion_by_code

__all__ = [
    "DMETarget",
    "GradeTarget",
    "LesionTarget",
    "ReferableTarget",
    "Target",
    "parse_target",
    "per_sample",
]

NUM_DR = len(DR_GRADE_NAMES)


@dataclass(frozen=True)
class GradeTarget:
    grade: int
    arch: str = "grader"

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[:, self.grade]

    def probability(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output[:, :NUM_DR], 1)[:, self.grade]

    @property
    def label(self) -> str:
        return f"DR grade {self.grade} ({DR_GRADE_NAMES[self.grade]})"


@dataclass(frozen=True)
class ReferableTarget:
    arch: str = "grader"

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(output[:, :NUM_DR], dim=1)
        return torch.logsumexp(log_probs[:, REFERABLE_MIN_GRADE:], dim=1)

    def probability(self, output: torch.Tensor) -> torch.Tensor:
        return torch.exp(self(output))

    @property
    def label(self) -> str:
        return "referable DR (grade >= 2)"


@dataclass(frozen=True)
class DMETarget:
    grade: int
    arch: str = "grader"

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[:, NUM_DR + self.grade]

    def probability(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output[:, NUM_DR:], 1)[:, self.grade]

    @property
    def label(self) -> str:
        return f"DME risk {self.grade} ({DME_NAMES[self.grade]})"


@dataclass(frozen=True)
class LesionTarget:
    code: str
    mask: np.ndarray | None = field(default=None, compare=False)
    arch: str = "segmenter"

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        channel = output[:, LESION_CODES.index(self.code)]
        if self.mask is None:
            return channel.sum(dim=(1, 2))
        mask = torch.as_tensor(self.mask, dtype=channel.dtype, device=channel.device)
        return (channel * mask).sum(dim=(1, 2))

    def probability(self, output: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the mean logit over the region: a [0, 1] score for deletion / insertion curves."""
        area = output.shape[-1] * output.shape[-2] if self.mask is None else max(1.0, float(self.mask.sum()))
        return torch.sigmoid(self(output) / area)

    @property
    def label(self) -> str:
        return f"lesion {self.code} ({lesion_by_code(self.code).name.lower()})"


Target = GradeTarget | ReferableTarget | DMETarget | LesionTarget


def per_sample(target: Target) -> Callable[[torch.Tensor], torch.Tensor]:
    """Adapt a batched target to grad-cam, which calls targets with one sample's output."""
    return lambda output: target(output.unsqueeze(0))[0]


def parse_target(text: str) -> Target:
    """Parse ``dr:3``, ``referable``, ``dme:2`` or ``lesion:EX`` (the CLI and app syntax)."""
    kind, _, value = text.partition(":")
    try:
        if kind == "dr" and 0 <= int(value) < NUM_DR:
            return GradeTarget(int(value))
        if kind == "dme" and 0 <= int(value) < len(DME_NAMES):
            return DMETarget(int(value))
    except ValueError:
        pass
    if kind == "referable":
        return ReferableTarget()
    if kind == "lesion" and value in LESION_CODES:
        return LesionTarget(value)
    raise ValueError(
        f"unknown target {text!r}; valid: dr:0..{NUM_DR - 1}, referable, dme:0..{len(DME_NAMES) - 1}, "
        f"lesion:{{{','.join(LESION_CODES)}}}"
    )
