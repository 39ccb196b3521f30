"""What a reader must know about how a map came to be, read from the model's card (no explainer imports,
so tables and reports can ask without loading captum or grad-cam)."""

from __future__ import annotations

from models.card import ModelCard

__all__ = ["supervision_note"]


def supervision_note(card: ModelCard) -> str:
    """The note "lesion-supervised" when the grader's attention was trained towards lesions (its card's
    ``training.recipe.attention_supervision``), with the stride of a fine attention map (``extra.
    fine_attention``: "lesion-supervised, stride 8"), else an empty string."""
    recipe = card.training.get("recipe") or {}
    if not recipe.get("attention_supervision"):
        return ""
    fine = card.extra.get("fine_attention") or {}
    return f"lesion-supervised, stride {fine['stride']}" if fine.get("stride") else "lesion-supervised"
