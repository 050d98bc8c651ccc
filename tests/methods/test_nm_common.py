"""N:M forward substitution: mask rule, STE/SR-STE/MDGF gradients, report, save/load."""

from __future__ import annotations

import torch
from torch import nn

import sparsecraft
from sparsecraft.methods import nm_common as nc


def _is_nm(w_rows: torch.Tensor, n: int, m: int) -> bool:
    nz = (w_rows != 0).reshape(w_rows.shape[0], -1, m).sum(-1)
    return bool((nz <= n).all())


def test_mask_keeps_largest_along_inputs_for_conv() -> None:
    conv = nn.Conv2d(4, 2, 1, bias=False)
    with torch.no_grad():
        w = torch.tensor([[1.0, -4.0, 3.0, 2.0], [0.5, 0.1, -0.2, 0.3]])
        conv.weight.copy_(w.reshape(2, 4, 1, 1))
    st = nc.install(conv, 2, 4, "ste")
    keep = conv.weight_mask.reshape(2, 4)
    assert keep.tolist() == [[False, True, True, False], [True, False, False, True]]
    assert st.layout.kind == "conv"


def test_ste_forward_is_masked_and_gradient_is_straight_through() -> None:
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]], requires_grad=True)
    keep = torch.tensor([[False, True, False, True]])
    y = nc.soft_masked_weight(w, keep)
    assert y.tolist() == [[0.0, -2.0, 0.0, 3.0]]
    y.backward(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    assert torch.allclose(w.grad, torch.tensor([[0.1, 0.2, 0.3, 0.4]]))


def test_sr_ste_gradient_hand_checked() -> None:
    # dL/dW = g + lambda * (1 - E) * W:  lambda = 0.5 -> pruned entries get +0.5 * w
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]], requires_grad=True)
    keep = torch.tensor([[False, True, False, True]])
    nc.soft_masked_weight(w, keep, lambda_w=0.5).backward(torch.full((1, 4), 0.1))
    assert torch.allclose(w.grad, torch.tensor([[0.1 + 0.5, 0.1, 0.1 + 0.25, 0.1]]))


def test_mdgf_forward_decays_pruned_entries() -> None:
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0]], requires_grad=True)
    keep = torch.tensor([[False, True, False, True]])
    y = nc.soft_masked_weight(w, keep, beta=0.25)
    assert torch.allclose(y, torch.tensor([[0.25, -2.0, 0.125, 3.0]]))
    y.sum().backward()
    assert torch.allclose(w.grad, torch.ones(1, 4))


def test_installed_linear_matches_masked_dense_and_keeps_bias(tmp_path) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(8, 3)
    model = nn.Sequential(lin)
    nc.install(lin, 2, 4, "sr-ste", lambda_w=2e-4)
    x = torch.randn(5, 8)
    w_f = lin.weight * lin.weight_mask
    assert torch.allclose(model(x), x @ w_f.t() + lin.bias)
    assert _is_nm(w_f, 2, 4)
    rep = sparsecraft.report(model)
    assert rep.layer("0.weight").sparsity == 0.5 and rep.layer("0.weight").pattern == "2:4"
    # dense weights are kept (not zeroed)
    assert int((lin.weight == 0).sum()) == 0
    # save / load round-trip into a fresh model with the same forward installed
    sparsecraft.save(model, tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Linear(8, 3))
    nc.install(fresh[0], 2, 4, "sr-ste", lambda_w=2e-4)
    sparsecraft.load(tmp_path / "m.safetensors", fresh)
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(fresh[0].weight, lin.weight)


def test_mask_recomputed_after_weight_change_and_uninstall_is_exact() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 4, 3)
    model = nn.Sequential(conv)
    nc.install(conv, 1, 4, "ste")
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(2, 8, 5, 5)).pow(2).mean().backward()
        opt.step()
        model(torch.randn(1, 8, 5, 5))
        expect = nc.nm_keep(conv.weight, nc.layout_for(conv, conv.weight), 1, 4)
        assert torch.equal(conv.weight_mask, expect)
    nc.uninstall(conv)
    rows = nc.layout_for(conv, conv.weight).to_rows(conv.weight)
    assert _is_nm(rows, 1, 4)
    assert sparsecraft.report(model).layer("0.weight").sparsity == 0.75
    assert "forward" not in conv.__dict__
