"""ISS-P: alpha = 0 equals IHT; alpha shrinks exactly the lowest set; exact after finalize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecraft.methods import attach


def lowest_by_hand(w: torch.Tensor, pattern: str) -> torch.Tensor:
    """True on the weights to shrink: the half of the layer with the smallest |w|
    ("unstructured") or the 2 smallest |w| of every 4 consecutive inputs of a row ("2:4")."""
    a = w.detach().abs()
    if pattern == "unstructured":
        low = torch.zeros(a.numel(), dtype=torch.bool)
        low[a.flatten().topk(a.numel() // 2, largest=False).indices] = True
        return low.reshape(w.shape)
    g = a.reshape(w.shape[0], -1, 4)
    low = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.topk(2, -1, largest=False).indices, True)
    return low.reshape(w.shape)


def _setup():  # noqa: ANN202
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    data = [(torch.randn(6, 8), torch.randn(6, 4)) for _ in range(6)]
    return model, data


def _step(model, opt, x, y) -> None:  # noqa: ANN001
    opt.zero_grad()
    (model(x) - y).pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_alpha_zero_is_iht(pattern: str) -> None:
    model, data = _setup()
    ref = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    attach(model, opt, method="iss-p", alpha=0.0, sparsity=0.5, pattern=pattern,
           total_steps=len(data), finetune_steps=0)
    for x, y in data:
        _step(model, opt, x, y)
        _step(ref, ref_opt, x, y)
        with torch.no_grad():  # IHT: zero the lowest half of every layer, re-chosen each step
            for lin in (ref[0], ref[2]):
                lin.weight.masked_fill_(lowest_by_hand(lin.weight, pattern), 0.0)
        for a, b in zip(model.parameters(), ref.parameters()):
            assert torch.allclose(a, b, atol=1e-6)
    assert all((lin.weight == 0).float().mean() == 0.5 for lin in (model[0], model[2]))


def test_soft_shrink_scales_only_lowest_then_hard_prunes() -> None:
    model, data = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no learning: only the shrinkage acts
    sp = attach(model, opt, method="iss-p", alpha=0.9, pattern="2:4", total_steps=4,
                finetune_steps=1)
    w0 = model[0].weight.detach().clone()
    _step(model, opt, *data[0])
    low = lowest_by_hand(w0, "2:4")
    assert torch.allclose(model[0].weight, torch.where(low, 0.9 * w0, w0))
    assert not sp.pruned
    for x, y in data[1:4]:
        _step(model, opt, x, y)
    assert sp.pruned
    sp.finalize()
    w = model[0].weight
    assert ((w != 0).reshape(8, 2, 4).sum(-1) == 2).all()
