"""TF "same" padding made constant for one input size, so an exported graph can fold it into its convolutions.

timm's TF-ported networks (the ``tf_efficientnet_lite*`` backbones) pad their stem and stride-2 layers by an
amount computed from the input shape at every call (``timm.layers.Conv2dSame``). Exported to ONNX with
dynamic height and width, each such layer becomes a Pad that ONNX Runtime cannot fold into the
convolution, with a reorder out of its blocked memory layout and back around it: 24% of a grader's time
on one thread (``grader_lite0_pair``, then the fast profile's grader, 28 of 118 ms, ONNX Runtime's own
profile). For a network that only ever sees one input size (a grader:
``workbench.runtime.FIXED_SIZE_ARCHS``) the padding is a constant, which ONNX Runtime's basic
optimisations fuse into the convolution. Same outputs to the last bit.
"""

from __future__ import annotations

import copy

import torch
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.padding import pad_same_arg
from torch import nn

__all__ = ["static_padding"]


def static_padding(module: nn.Module, size: int) -> nn.Module:
    """``module`` itself when it has no timm ``Conv2dSame``, else a copy for ``size`` x ``size`` inputs
    only, each ``Conv2dSame`` replaced by the constant padding it computes for its input there and a
    plain convolution on the same weights (the module docstring says why). The copy gives the same
    outputs at that size; ``module`` is left as it is (explainers hook it)."""
    if not any(isinstance(m, Conv2dSame) for m in module.modules()):
        return module
    module = copy.deepcopy(module)
    seen: dict[nn.Module, set[tuple[int, int]]] = {}

    def record(conv: nn.Module, args: tuple) -> None:
        seen.setdefault(conv, set()).add(tuple(args[0].shape[-2:]))

    hooks = [m.register_forward_pre_hook(record) for m in module.modules() if isinstance(m, Conv2dSame)]
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    for parent in list(module.modules()):
        for name, conv in list(parent.named_children()):
            if not isinstance(conv, Conv2dSame) or len(seen.get(conv, ())) != 1:
                continue  # unused, or called at two sizes: its padding stays computed per call
            (height, width), *_ = seen[conv]
            kernel, stride, dilation = list(conv.kernel_size), list(conv.stride), list(conv.dilation)
            pads = pad_same_arg([height, width], kernel, stride, dilation)
            plain = nn.Conv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                0,
                conv.dilation,
                conv.groups,
                conv.bias is not None,
            )
            plain.weight, plain.bias = conv.weight, conv.bias
            setattr(parent, name, nn.Sequential(nn.ZeroPad2d(pads), plain))
    return module
