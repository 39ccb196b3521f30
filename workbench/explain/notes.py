"""What a reader must know about how a map came to be (read from the model's card) and how it is scored
(no explainer imports, so tables and reports can ask without loading captum or grad-cam)."""

from __future__ import annotations

from models.card import ModelCard

__all__ = [
    "METHOD_LABELS",
    "POINTING_TOLERANCE_PX",
    "RANDOMISATION_RHO_LIMIT",
    "SCORE_COLUMNS",
    "explanation_columns_legend",
    "supervision_note",
]

# Radius of the pointing-game disc, in pixels of a 4288-px-wide original: about one small haemorrhage.
POINTING_TOLERANCE_PX = 25.0
# The score columns every face shows: title (with its direction) -> what it measures, in one line.
SCORE_COLUMNS = {
    "deletion AUC (lower is better)": "area under the target probability as the map's most relevant pixels "
    "are removed first (replaced by a blurred copy): a faithful map makes it fall fast",
    "insertion AUC (higher is better)": "area under the target probability as the most relevant pixels are "
    "revealed first on the blurred copy: a faithful map makes it rise fast",
    "pointing game (1 = hit)": "1 when the map's strongest pixel lies on a segmented lesion (or within "
    f"{POINTING_TOLERANCE_PX:.0f} px of one in a 4288-px-wide photograph), 0 when not",
    "relevance mass (0-1, higher is better)": "share of the map's positive evidence that falls on lesions",
    "relevance rank (0-1, higher is better)": "share of the map's top pixels (as many as there are lesion "
    "pixels) that are lesion pixels",
}
# What each registered method is, for menus: name -> a few words (family, what it reads, and a cost where it
# is slow on a CPU); a method missing here is shown by its name alone.
METHOD_LABELS = {
    "attention": "grader's own attention (instant; grade targets only)",
    "integrated_gradients": "Integrated Gradients (blurred baseline; seconds)",
    "integrated_gradients_black": "Integrated Gradients (black baseline; seconds)",
    "saliency": "saliency (input gradient)",
    "smoothgrad": "SmoothGrad (averaged noisy gradients; seconds)",
    "gradient_shap": "GradientSHAP (seconds)",
    "occlusion": "occlusion (patches hidden in turn; seconds)",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "hirescam": "HiResCAM",
    "xgradcam": "XGrad-CAM",
    "layercam": "LayerCAM",
    "eigencam": "Eigen-CAM (no gradients)",
    "scorecam": "Score-CAM (32 strongest channels; seconds)",
    "scorecam_full": "Score-CAM, every channel (minutes)",
}
# Model randomisation (Adebayo et al., 2018): a method whose map keeps a Spearman correlation above this with
# the map of a weight-randomised copy of the network is flagged: its map does not depend on what was learnt.
RANDOMISATION_RHO_LIMIT = 0.5


def explanation_columns_legend(columns: tuple[str, ...]) -> str:
    """Markdown lines that explain the explanation-quality table's ``columns`` (titles that open
    ``SCORE_COLUMNS`` keys) and its randomisation column, one column a line."""
    lines = [
        "Columns (each a mean over the photographs; pointing game and relevance mass over those with a "
        "lesion and some positive evidence in the map):"
    ]
    for title in columns:
        key = next(k for k in SCORE_COLUMNS if k.startswith(title))
        lines.append(f"- **{title}** {key.removeprefix(title).strip()}: {SCORE_COLUMNS[key]}")
    lines.append(
        "- **randomisation rho** (lower is better): the Spearman correlation between the map and the map of "
        "the same network with random weights (both as absolute values; Adebayo et al., 2018). A map that "
        f"barely changes (above {RANDOMISATION_RHO_LIMIT}) does not depend on what the network learnt and is "
        "marked *fails*; near 0 or below, the map changed with the weights, as it should."
    )
    return "\n".join(lines)


def supervision_note(card: ModelCard) -> str:
    """The note "lesion-supervised" when the grader's attention was trained towards lesions (its card's
    ``training.recipe.attention_supervision``), with the stride of a fine attention map (``extra.
    fine_attention``: "lesion-supervised, stride 8"), else an empty string."""
    recipe = card.training.get("recipe") or {}
    if not recipe.get("attention_supervision"):
        return ""
    fine = card.extra.get("fine_attention") or {}
    return f"lesion-supervised, stride {fine['stride']}" if fine.get("stride") else "lesion-supervised"
