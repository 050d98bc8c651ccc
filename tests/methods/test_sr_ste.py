"""SR-STE: the gradient reaching the dense weight equals g + lambda_w (1 - E) W."""

from __future__ import annotations

import torch
from torch import nn

from sparsecraft.methods import attach


def test_sr_ste_gradient_matches_formula_on_hand_checked_tensor() -> None:
    lin = nn.Linear(4, 1, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
        lin.bias.fill_(0.5)
    model = nn.Sequential(lin)
    attach(model, None, method="sr-ste", pattern="2:4", total_steps=5, lambda_w=0.5)
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    y = model(x)
    assert y.item() == -2.0 + 3.0 + 0.5  # W*E = [0, -2, 0, 3], bias kept
    y.backward()
    # g = x = 1 everywhere; pruned entries (w=1, w=0.5) get + 0.5 * w
    assert torch.allclose(lin.weight.grad, torch.tensor([[1.5, 1.0, 1.25, 1.0]]))
    assert lin.bias.grad.item() == 1.0


def test_default_lambda_is_2e_4() -> None:
    sp = attach(nn.Sequential(nn.Linear(4, 2)), None, method="sr-ste", total_steps=1)
    assert sp.lambda_w == 2e-4
