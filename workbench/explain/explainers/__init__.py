"""Explainer registry: ``EXPLAINERS`` maps a name to a factory; the apps build their menus from it.

Adapters register themselves with ``@register_explainer("name")``; importing this package imports every
adapter module so the registry is complete.
"""

from __future__ import annotations

from collections.abc import Callable

from workbench.explain.explainers.base import ExplainableModel, Explainer, Heatmap

__all__ = ["EXPLAINERS", "ExplainableModel", "Explainer", "Heatmap", "get_explainer", "register_explainer"]

EXPLAINERS: dict[str, Callable[[], Explainer]] = {}


def register_explainer(name: str) -> Callable[[Callable[[], Explainer]], Callable[[], Explainer]]:
    def decorator(factory: Callable[[], Explainer]) -> Callable[[], Explainer]:
        if name in EXPLAINERS:
            raise ValueError(f"explainer {name!r} is already registered")
        EXPLAINERS[name] = factory
        return factory

    return decorator


def get_explainer(name: str) -> Explainer:
    if name not in EXPLAINERS:
        raise KeyError(f"unknown explainer {name!r}; valid names: {', '.join(EXPLAINERS)}")
    return EXPLAINERS[name]()


# Adapters register on import (kept last: they import register_explainer from here).
from workbench.explain.explainers import attention, captum_methods, gradcam  # noqa: E402, F401
