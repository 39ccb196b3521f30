"""What a reader must know about how a map came to be, read from the model's card (no explainer imports,
so tables and reports can ask without loading captum or grad-cam)."""

from __future__ import annotations

from models.card import ModelCard

__all__ = ["EXPLANATION_COLUMNS_LEGEND", "RANDOMISATION_RHO_LIMIT", "supervision_note"]

# Model randomisation (Adebayo et al., 2018): a method whose map keeps a Spearman correlation above this with
# the map of a weight-randomised copy of the network is flagged: its map does not depend on what was learnt.
RANDOMISATION_RHO_LIMIT = 0.5

EXPLANATION_COLUMNS_LEGEND = (
    "Columns: **pointing game**, the share of photographs where the map's maximum falls on a lesion "
    "(higher is better); **relevance mass**, the share of the map's positive relevance on lesion pixels "
    "(higher is better); **insertion AUC**, how fast the grade's probability rises as the most salient "
    "pixels are revealed on a blurred copy (higher is better); **deletion AUC**, how fast it falls as they "
    "are blurred away (lower is better); **randomisation rho**, the Spearman correlation between the map and "
    "the map of the same network with random weights (Adebayo et al., 2018): above "
    f"{RANDOMISATION_RHO_LIMIT} the map barely depends on what the network learnt and is marked *fails* "
    "(lower is better)."
)


def supervision_note(card: ModelCard) -> str:
    """The note "lesion-supervised" when the grader's attention was trained towards lesions (its card's
    ``training.recipe.attention_supervision``), with the stride of a fine attention map (``extra.
    fine_attention``: "lesion-supervised, stride 8"), else an empty string."""
    recipe = card.training.get("recipe") or {}
    if not recipe.get("attention_supervision"):
        return ""
    fine = card.extra.get("fine_attention") or {}
    return f"lesion-supervised, stride {fine['stride']}" if fine.get("stride") else "lesion-supervised"
