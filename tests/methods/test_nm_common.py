"""N:M core: mask rule, STE/SR-STE/MDGF autograd, report truth, save/load, finalize."""

from __future__ import annotations

import torch
from torch import nn

import sparsecraft
from sparsecraft.layout import WeightLayout
from sparsecraft.methods import attach
from sparsecraft.methods.nm_common import nm_keep, soft_masked_weight

KEEP = torch.tensor([[False, True, False, True]])


def test_mask_keeps_largest_along_input_channels_of_conv() -> None:
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0], [0.5, 0.1, -0.2, 0.3]]).reshape(2, 4, 1, 1)
    keep = nm_keep(w, WeightLayout("conv", (2, 4, 1, 1)), 2, 4).reshape(2, 4)
    assert keep.tolist() == [[False, True, True, False], [True, False, False, True]]


def test_ste_forward_masked_gradient_straight_through() -> None:
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]], requires_grad=True)
    y = soft_masked_weight(w, KEEP)
    assert y.tolist() == [[0.0, -2.0, 0.0, 3.0]]
    y.backward(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    assert torch.allclose(w.grad, torch.tensor([[0.1, 0.2, 0.3, 0.4]]))


def test_mdgf_forward_decays_pruned_entries_backward_plain() -> None:
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]], requires_grad=True)
    y = soft_masked_weight(w, KEEP, beta=0.25)
    assert torch.allclose(y, torch.tensor([[0.25, -2.0, 0.125, 3.0]]))
    y.sum().backward()
    assert torch.allclose(w.grad, torch.ones(1, 4))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def test_report_is_true_and_save_load_round_trip(tmp_path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    attach(model, opt, method="ste", pattern="2:4", total_steps=10)
    x = torch.randn(5, 8)
    lin = model[0]
    assert torch.allclose(lin(x), x @ (lin.weight * lin.weight_mask).t() + lin.bias)
    rep = sparsecraft.report(model)
    assert rep.layer("0.weight").sparsity == 0.5 and rep.layer("0.weight").pattern == "2:4"
    assert int((lin.weight == 0).sum()) == 0  # the dense weight is kept
    sparsecraft.save(model, tmp_path / "m.safetensors")
    fresh = _model()
    attach(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), method="ste", pattern="2:4", total_steps=10)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    sparsecraft.load(fresh, tmp_path / "m.safetensors")
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(fresh[0].weight, lin.weight)
