"""The builder registry alone: a name -> ``fn(card) -> nn.Module`` map that imports no model family.

The families (``classifier``, ``segmenter``, ``localizer``) register into it on import; ``models.registry``
imports them and re-exports these names, so nothing imports back up (as ``timm/models/_registry.py``).
``register_model`` raises on a duplicate name (timm only warns, which hides a shadowed builder).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from models.card import ModelCard

__all__ = ["MODEL_REGISTRY", "build_model", "register_model"]

MODEL_REGISTRY: dict[str, Callable[[ModelCard], nn.Module]] = {}


def register_model(
    name: str,
) -> Callable[[Callable[[ModelCard], nn.Module]], Callable[[ModelCard], nn.Module]]:
    """Decorator: register ``fn(card) -> nn.Module`` under ``name``; a duplicate name raises."""

    def decorator(fn: Callable[[ModelCard], nn.Module]) -> Callable[[ModelCard], nn.Module]:
        if name in MODEL_REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        MODEL_REGISTRY[name] = fn
        return fn

    return decorator


def build_model(card: ModelCard) -> nn.Module:
    """Build the architecture named by ``card.name`` with random (or ImageNet-initialised) weights.

    Here, beside the map, so that a family that builds other families (``models.ensemble``) needs no
    import of ``models.registry``, which imports every family.
    """
    if card.name not in MODEL_REGISTRY:
        raise KeyError(f"unknown model {card.name!r}; registered: {', '.join(sorted(MODEL_REGISTRY))}")
    return MODEL_REGISTRY[card.name](card)
