"""Channel surgery: dead channels removed, outputs unchanged, sizes and masks consistent."""

from __future__ import annotations

import torch
from torch import nn

from sparsecraft.masks import set_mask
from sparsecraft.methods.channel_surgery import remove_pruned_channels


def _kill(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: list[int]) -> None:
    keep = torch.ones(conv.out_channels, dtype=torch.bool)
    keep[channels] = False
    set_mask(conv, keep[:, None, None, None].expand_as(conv.weight).clone())
    for p in ("weight", "bias"):
        set_mask(bn, keep.clone(), p)


def test_conv_bn_chain_into_conv_and_linear_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 3),
    )  # fmt: skip
    model.train()
    model(torch.randn(8, 2, 6, 6))  # non-trivial running statistics
    _kill(model[0], model[1], [1])
    _kill(model[3], model[4], [0, 4])
    model.eval()
    x = torch.randn(5, 2, 6, 6)
    before = model(x)
    removed = remove_pruned_channels(model)
    assert removed == {"0": 1, "3": 2}
    assert model[0].weight.shape == (3, 2, 3, 3) and model[1].num_features == 3
    assert model[3].weight.shape == (4, 3, 3, 3) and model[3].in_channels == 3
    assert model[7].weight.shape == (3, 16) and model[7].in_features == 16
    assert model[0].weight_mask.shape == model[0].weight.shape
    assert torch.allclose(model(x), before, atol=1e-6)


def test_live_channel_with_bias_is_kept() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[0] = False
    set_mask(model[0], keep)
    with torch.no_grad():
        model[0].bias.fill_(0.5)  # channel 0 outputs relu(0.5) != 0: not dead
    assert remove_pruned_channels(model) == {}
    with torch.no_grad():
        model[0].bias[0] = 0.0
    x = torch.randn(3, 4)
    before = model(x)
    assert remove_pruned_channels(model) == {"0": 1}
    assert torch.allclose(model(x), before)
