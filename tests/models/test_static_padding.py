"""Constant "same" padding for one input size: same outputs, the module untouched, reused layers kept."""

from __future__ import annotations

import torch
from timm.layers.conv2d_same import Conv2dSame
from torch import nn

from models.static_padding import static_padding


class _Twice(nn.Module):
    """One TF-padded layer called at two sizes, and one called at one."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = Conv2dSame(3, 3, 3, stride=2)
        self.once = Conv2dSame(3, 4, 5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.shared(x)
        quarter = self.shared(half)
        return self.once(x).mean((2, 3)) + quarter.mean((2, 3)).sum(1, keepdim=True)


def test_a_layer_called_at_one_size_pads_by_constants_and_one_called_at_two_keeps_its_own() -> None:
    torch.manual_seed(0)
    model = _Twice().eval()
    fixed = static_padding(model, 31)  # odd: asymmetric padding on both axes
    assert isinstance(fixed.shared, Conv2dSame)  # two sizes: its padding stays computed per call
    assert isinstance(fixed.once, nn.Sequential) and isinstance(fixed.once[0], nn.ZeroPad2d)
    assert isinstance(model.once, Conv2dSame)  # the module itself is left as it was
    assert torch.equal(fixed.once[1].weight, model.once.weight)  # the same weights (in a copy)
    x = torch.rand(2, 3, 31, 31)
    with torch.no_grad():
        assert torch.equal(fixed(x), model(x))


def test_a_network_without_tf_padding_is_returned_as_it_is() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1))
    assert static_padding(plain, 32) is plain
