"""MaskSparsity: lambda*sign(gamma) only on chosen channels; |gamma| < 0.01 channels pruned."""

from __future__ import annotations

import torch
from torch import nn

import sparsecraft
from sparsecraft.methods import attach


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -0.3, 0.2, -0.005]))
    return model


def _grads(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    model(x).pow(2).mean().backward()
    return model[1].weight.grad.clone()


def test_sign_penalty_only_on_chosen_channels() -> None:
    model = _model()
    x = torch.randn(3, 2, 5, 5)
    ref = _grads(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    attach(model, opt, method="mask-sparsity", chosen={"1": [1, 3]}, lam=0.1, total_steps=10)
    model.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()  # pre-step hook adds the penalty
    expect = ref + torch.tensor([0.0, -0.1, 0.0, -0.1])
    assert torch.allclose(model[1].weight.grad, expect, atol=1e-6)


def test_default_choice_is_smallest_ratio_and_prune_masks_whole_channel() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = attach(model, opt, method="mask-sparsity", ratio=0.5, total_steps=3, finetune_steps=2)
    assert sp.chosen["1"].tolist() == [False, False, True, True]
    assert sp.producers == {"1": "0.weight"}
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 2, 5, 5)).pow(2).mean().backward()
        opt.step()
    assert sp.pruned and sp.pruned_counts == {"1": 1}
    sp.finalize()
    assert (model[0].weight[3] == 0).all() and (model[0].weight[:3] != 0).all()
    assert model[1].weight[3] == 0 and model[1].bias[3] == 0
    model.train()
    out = model[1](model[0](torch.randn(2, 2, 5, 5)))
    assert (out[:, 3] == 0).all()
    rep = sparsecraft.report(model)
    assert rep.layer("0.weight").sparsity == 0.25


def test_physical_removal_at_finalize_keeps_outputs() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sp = attach(model, opt, method="mask-sparsity", total_steps=2, finetune_steps=1,
                physical=True)
    x = torch.randn(2, 2, 5, 5)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    model.eval()
    before = model(x)
    sp.finalize()
    assert sp.removed_channels == {"0": 1}
    assert model[0].weight.shape[0] == 3 and model[4].in_features == 27
    assert torch.allclose(model(x), before, atol=1e-6)
