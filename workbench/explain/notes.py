"""What a reader must know about how a map came to be, read from the model's card (no explainer imports,
so tables and reports can ask without loading captum or grad-cam)."""

from __future__ import annotations

from models.card import ModelCard

__all__ = ["supervision_note"]


def supervision_note(card: ModelCard) -> str:
    """The note "lesion-supervised" when the grader's attention was trained towards lesions (its card's
    ``training.recipe.attention_supervision``), else an empty string."""
    recipe = card.training.get("recipe") or {}
    return "lesion-supervised" if recipe.get("attention_supervision") else ""
