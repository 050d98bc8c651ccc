"""Group-lasso proximal step on hand-checked groups."""

from __future__ import annotations

import torch

from sparsecraft.layout import WeightLayout
from sparsecraft.methods.group_lasso import group_shape, prox_group_lasso_

LIN = WeightLayout("linear", (2, 4))


def test_prox_on_hand_checked_channel_groups() -> None:
    # row 0 norm = 5 (3,4,0,0): shrink by 1 -> scaled by 4/5; row 1 norm = 0.5 < 1 -> zero
    w = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.3, 0.0, 0.4, 0.0]])
    h, gw = group_shape("channel", LIN)
    zeroed = prox_group_lasso_(w, LIN, h, gw, thresh=1.0)
    assert torch.allclose(w, torch.tensor([[2.4, 3.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert zeroed == 1


def test_prox_on_nm_groups_of_conv() -> None:
    # conv (out=1, in=4, 1x1): the groups of M=2 run along input channels
    conv = WeightLayout("conv", (1, 4, 1, 1))
    w = torch.tensor([6.0, 8.0, 0.1, 0.1]).reshape(1, 4, 1, 1)
    assert group_shape("2:4", conv) == (1, 4) and group_shape("group:2", conv) == (1, 2)
    prox_group_lasso_(w, conv, 1, 2, thresh=5.0)  # norm 10 -> 5: halved; norm 0.14 -> 0
    assert torch.allclose(w.reshape(-1), torch.tensor([3.0, 4.0, 0.0, 0.0]))


def test_block_groups() -> None:
    w = torch.ones(2, 4)  # two 2x2 blocks of norm 2
    prox_group_lasso_(w, LIN, *group_shape("block:2x2", LIN), thresh=1.0)
    assert torch.allclose(w, torch.full((2, 4), 0.5))
