"""A grader ensemble: shipped graders, each on the image and on its mirror image, averaged as one module.

The faces never learn whether a grader is one network or several (STYLE 9): an ensemble has a card of its
own (``arch`` "grader", ``name`` "grader_ensemble") that names its members and how they combine, and
``models.registry.load_model`` loads it like any grader.

Combination (``GraderEnsemble.forward``): each member's logits, already divided by the member's own
temperature (its card's ``extra.temperature``), are averaged over the members and over the views (the
image, and with ``flip`` its horizontal mirror); the mean is divided by the ensemble's temperature, fitted
on the ensemble's out-of-fold logits (``training.ensemble``). The mean of logits is the normalised
geometric mean of the members' probabilities: one member that is sure cannot outvote the others by a
single extreme probability, and the ensemble stays a logit model that temperature scaling applies to.

Members may take different input sizes (``members/grader_lite2_512`` beside 448-px members). The
ensemble's card takes the largest; each smaller member gets the crop shrunk to its own size inside the
module, by the area averaging ``models.preprocess.resize_crop`` applies when a member runs alone (cv2
``INTER_AREA``, here as two fixed matrix products, ``area_resize``): a member sees in the ensemble the
pixels it sees on its own, up to cv2's rounding to 8 bits, and the resize is part of the ONNX graph.

The ensemble's own weights file holds only that temperature; each member is loaded from its own card
and weights, and the ensemble's card records every member's sha256, so a member retrained under the
same name fails to load instead of silently changing the ensemble.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from models._registry import build_model, register_model
from models.card import ModelCard
from models.classifier import Grader

__all__ = ["GraderEnsemble", "area_matrix", "area_resize", "ensemble_card"]


@lru_cache(maxsize=16)
def area_matrix(source: int, size: int) -> np.ndarray:
    """(size, source) weights of cv2's ``INTER_AREA`` shrink along one axis: output pixel ``i`` averages
    the source interval ``[i * s, (i + 1) * s)`` (``s = source / size``), edge pixels by the fraction
    of them it covers."""
    if size > source:
        raise ValueError(f"area averaging only shrinks: {source} -> {size} px")
    scale = source / size
    weights = np.zeros((size, source), np.float64)
    for i in range(size):
        start, stop = i * scale, (i + 1) * scale
        for j in range(int(np.floor(start)), min(source, int(np.ceil(stop)))):
            weights[i, j] = min(stop, j + 1) - max(start, j)
    weights /= weights.sum(1, keepdims=True)
    weights.setflags(write=False)
    return weights


def area_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, S, S) -> (B, C, size, size) by area averaging, as ``resize_crop`` shrinks a crop.

    Area averaging repeats every ``S / gcd`` source pixels (512 -> 448: each 8 source pixels give 7),
    so each axis is one small matrix product over those blocks (a few MFLOP) rather than the dense
    ``area_matrix`` product (1.3 GFLOP for 512 -> 448 px); sizes without such a short period use it."""
    side, size = int(x.shape[-1]), int(size)
    if x.ndim != 4 or int(x.shape[-2]) != side:
        raise ValueError(f"area_resize takes square (B, C, S, S) crops, got {tuple(x.shape)}")
    if side == size:
        return x
    if size > side:
        raise ValueError(f"area averaging only shrinks: {side} -> {size} px")
    period = side // math.gcd(side, size)
    if period <= 64:  # rows then columns, each a product over blocks of ``period`` pixels (no transposes)
        block = torch.tensor(area_matrix(period, size * period // side), dtype=x.dtype, device=x.device)
        channels, blocks = int(x.shape[1]), side // period
        # -1 for the batch: the exported graph must take any batch (a traced x.shape[0] is a constant)
        rows = (x.reshape(-1, channels, side, blocks, period) @ block.T).reshape(-1, channels, side, size)
        return (block @ rows.reshape(-1, channels, blocks, period, size)).reshape(-1, channels, size, size)
    dense = torch.tensor(area_matrix(side, size), dtype=x.dtype, device=x.device)
    return dense @ x @ dense.T


class GraderEnsemble(nn.Module):
    """Mean logits of several graders over the image and (``flip``) its mirror image.

    Args:
        members: graders with the same heads (DR and DME classes).
        flip: also grade the horizontal mirror image (test-time augmentation).
        temperature: (DR, DME) temperature of the averaged logits.
        names, cards: each member's card stem and card, when loaded from files (explainers explain one
            member and need its card: ``workbench.predictors.GraderPredictor.explained``). A member
            whose card asks for a smaller input than the ensemble gets the crop shrunk to its size.
    """

    def __init__(
        self,
        members: Sequence[Grader],
        flip: bool = True,
        temperature: tuple[float, float] = (1.0, 1.0),
        names: Sequence[str] = (),
        cards: Sequence[ModelCard] = (),
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        heads = {(m.num_dr, m.dme_head.out_features) for m in members}
        if len(heads) != 1:
            raise ValueError(f"ensemble members disagree on their heads (DR, DME classes): {sorted(heads)}")
        self.members = nn.ModuleList(members)
        self.member_names, self.member_cards = tuple(names), tuple(cards)
        self.sizes = tuple(int(c.input_size) for c in cards) or (None,) * len(members)
        self.flip = flip
        self.num_dr = members[0].num_dr
        # persistent: the ensemble's own (and only) stored parameter, in its weights file
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))

    def _views(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, x.flip(-1)] if self.flip else [x]

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(members, B, num_dr + num_dme) logits of each member at its own input size, averaged over the
        views."""
        return torch.stack(
            [
                torch.stack([m(v) for v in self._views(area_resize(x, size) if size else x)]).mean(0)
                for m, size in zip(self.members, self.sizes, strict=True)
            ]
        )

    def combine(self, member_logits: torch.Tensor) -> torch.Tensor:
        """(members, B, C) logits from ``member_logits`` -> (B, C) logits of the ensemble."""
        dr, dme = self.split_logits(member_logits.mean(0))
        return torch.cat([dr / self.temperature[0], dme / self.temperature[1]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised RGB (S: the largest member's input size) -> (B, num_dr + num_dme)
        logits of the ensemble."""
        return self.combine(self.member_logits(x))

    def split_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits[:, : self.num_dr], logits[:, self.num_dr :]


def ensemble_card(members: Sequence[tuple[str, ModelCard]], flip: bool, **extra: object) -> ModelCard:
    """The card of an ensemble of ``members`` ((card stem, card) pairs): normalisation, labels and heads
    from the first member, which all members must share; the input size of the largest member (each
    smaller one shrinks the crop to its own, ``GraderEnsemble``). A smaller member sees what it sees
    alone only while the largest is no larger than the grading crop (512 px): a larger one would have the
    crop enlarged first (``training.ensemble.build_ensemble`` refuses that)."""
    first = members[0][1]

    def shape(card: ModelCard) -> tuple:
        return card.arch, card.num_classes, card.mean, card.std, card.label_names

    for stem, card in members:
        if shape(card) != shape(first):
            raise ValueError(f"member {stem} differs from {members[0][0]} in normalisation, labels or heads")
    sizes = {card.input_size for _, card in members}
    return ModelCard(
        name="grader_ensemble",
        arch="grader",
        encoder="+".join(card.encoder for _, card in members),
        num_classes=first.num_classes,
        input_size=max(sizes),
        mean=first.mean,
        std=first.std,
        label_names=first.label_names,
        target_layer="",  # explainers explain one member (``workbench.predictors.GraderPredictor``)
        task=first.task,
        preprocessing=first.preprocessing,
        # each member's card stem and the sha256 it must have (models.registry.load_model checks it)
        extra={
            "members": [
                {"model": stem, "sha256": c.sha256} | ({"input_size": c.input_size} if len(sizes) > 1 else {})
                for stem, c in members
            ],
            "flip": flip,
            **extra,
        },
    )


@register_model("grader_ensemble")
def grader_ensemble(card: ModelCard) -> GraderEnsemble:
    """An ensemble of untrained members built from the cards in ``extra.member_cards`` (the registry's
    contract tests build it so). Shipped ensembles do not come through here: ``models.registry.load_model``
    loads each member from its own card and weights and joins them (``extra.members``)."""
    cards = [ModelCard.from_dict(c) for c in card.extra["member_cards"]]
    temperature = card.extra.get("temperature") or {}
    return GraderEnsemble(
        [build_model(c) for c in cards],
        flip=bool(card.extra.get("flip", True)),
        temperature=(float(temperature.get("dr", 1.0)), float(temperature.get("dme", 1.0))),
        names=[m["model"] for m in card.extra.get("members", [])]
        or [f"member {i}" for i in range(len(cards))],
        cards=cards,
    )
