"""Make every process of the project offline-safe.

The product runs where model hubs are unreachable and must never phone home: these variables have to be
set before gradio or huggingface_hub are imported, so ``workbench/__init__.py`` applies them first.
``setdefault`` leaves a value the user set on purpose alone.
"""

from __future__ import annotations

import os

__all__ = ["OFFLINE_ENV", "apply"]

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
}


def apply() -> None:
    """Set the offline variables in ``os.environ`` unless already set."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
