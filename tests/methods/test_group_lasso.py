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


def test_method_prox_uses_lr_times_lambda_then_prunes_channels() -> None:
    from torch import nn

    from sparsecraft.methods import attach

    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.3, 0.0, 0.4, 0.0]]))
    model = nn.Sequential(lin)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sp = attach(model, opt, method="group-lasso", groups="channel", lam=2.0, total_steps=3,
                finetune_steps=1)
    opt.zero_grad()
    lin.weight.grad = torch.zeros_like(lin.weight)
    opt.step()  # prox threshold 0.5 * 2 = 1: row 0 norm 5 -> 4, row 1 -> 0
    assert torch.allclose(lin.weight, torch.tensor([[2.4, 3.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert sp.zero_groups == {"0.weight": 1}
    opt.step()
    opt.step()  # step 3 >= prune step 2 already: channel 1 masked for good
    assert sp.pruned and sp.mask(sp.targets[0])[:, 0].tolist() == [True, False]
    sp.finalize()
    assert (lin.weight[1] == 0).all() and (lin.weight[0] != 0).sum() == 2
