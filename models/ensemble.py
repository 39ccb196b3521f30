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

The ensemble's own weights file holds only that temperature; each member is loaded from its own card
and weights, and the ensemble's card records every member's sha256, so a member retrained under the
same name fails to load instead of silently changing the ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models._registry import build_model, register_model
from models.card import ModelCard
from models.classifier import Grader

__all__ = ["GraderEnsemble", "ensemble_card"]


class GraderEnsemble(nn.Module):
    """Mean logits of several graders over the image and (``flip``) its mirror image.

    Args:
        members: graders with the same heads (DR and DME classes) and input size.
        flip: also grade the horizontal mirror image (test-time augmentation).
        temperature: (DR, DME) temperature of the averaged logits.
        names, cards: each member's card stem and card, when loaded from files (explainers explain one
            member and need its card: ``workbench.predictors.GraderPredictor.explained``).
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
        self.flip = flip
        self.num_dr = members[0].num_dr
        # persistent: the ensemble's own (and only) stored parameter, in its weights file
        self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))

    def _views(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, x.flip(-1)] if self.flip else [x]

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(members, B, num_dr + num_dme) logits of each member, averaged over the views."""
        return torch.stack([torch.stack([m(v) for v in self._views(x)]).mean(0) for m in self.members])

    def combine(self, member_logits: torch.Tensor) -> torch.Tensor:
        """(members, B, C) logits from ``member_logits`` -> (B, C) logits of the ensemble."""
        dr, dme = self.split_logits(member_logits.mean(0))
        return torch.cat([dr / self.temperature[0], dme / self.temperature[1]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised RGB -> (B, num_dr + num_dme) logits of the ensemble."""
        return self.combine(self.member_logits(x))

    def split_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits[:, : self.num_dr], logits[:, self.num_dr :]


def ensemble_card(members: Sequence[tuple[str, ModelCard]], flip: bool, **extra: object) -> ModelCard:
    """The card of an ensemble of ``members`` ((card stem, card) pairs): input size, normalisation,
    labels and heads from the first member, which all members must share."""
    first = members[0][1]

    def shape(card: ModelCard) -> tuple:
        return card.arch, card.num_classes, card.input_size, card.mean, card.std, card.label_names

    for stem, card in members:
        if shape(card) != shape(first):
            raise ValueError(
                f"member {stem} differs from {members[0][0]} in input size, normalisation or heads"
            )
    return ModelCard(
        name="grader_ensemble",
        arch="grader",
        encoder="+".join(card.encoder for _, card in members),
        num_classes=first.num_classes,
        input_size=first.input_size,
        mean=first.mean,
        std=first.std,
        label_names=first.label_names,
        target_layer="",  # explainers explain one member (``workbench.predictors.GraderPredictor``)
        task=first.task,
        preprocessing=first.preprocessing,
        # each member's card stem and the sha256 it must have (models.registry.load_model checks it)
        extra={
            "members": [{"model": stem, "sha256": c.sha256} for stem, c in members],
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
