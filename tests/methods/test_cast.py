"""CAST-style: masks every T1 steps, decay on masked-out weights only, scale, distillation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.methods import attach


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4))


@pytest.mark.parametrize("mode", ["adaptive", "decoupled"])
def test_decay_hits_masked_out_weights_only(mode: str) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sp = attach(model, opt, method="cast", decay=0.5, decay_mode=mode, scale=False,
                total_steps=20)
    w0 = model[0].weight.detach().clone()
    keep = sp.mask(sp.targets[0]).clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero task gradient: only the decay acts (SGD lr 1: W -= 0.5 (1-E) W)
    assert torch.allclose(model[0].weight, torch.where(keep, w0, 0.5 * w0))


def test_masks_change_only_every_t1_steps_and_finalize_folds_scale() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = attach(model, opt, method="cast", pattern="2:4", total_steps=30, decay=0.0)
    assert len(opt.param_groups) == 2  # the layer scale is trained
    history = []
    for i in range(12):
        if i == 3:  # a big change of W between updates must not move the mask ...
            with torch.no_grad():
                model[0].weight.mul_(torch.linspace(0.1, 3.0, 8))
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        history.append(sp.mask(sp.targets[0]).clone())
    assert all(torch.equal(history[i], history[0]) for i in range(9))  # steps 1..9
    assert not torch.equal(history[9], history[0])  # ... until the step-10 update
    assert sp.scales["0.weight"].item() != 1.0
    x = torch.randn(3, 8)
    before = model(x).detach()
    sp.finalize()
    assert torch.allclose(model(x), before, atol=1e-6)
    assert ((model[0].weight != 0).reshape(4, 2, 4).sum(-1) == 2).all()


def test_distillation_loss_formula() -> None:
    model = _model()
    sp = attach(model, None, method="cast", teacher=True, kd_weight=0.25, kd_temperature=2.0,
                total_steps=5)
    x = torch.randn(5, 8)
    out = model(x)
    t = sp.teacher(x)
    kd = (F.softmax(t / 2, -1) * (F.log_softmax(t / 2, -1) - F.log_softmax(out / 2, -1))).sum(-1)
    expect = 0.75 * 1.0 + 0.25 * 4 * kd.mean()
    got = sp.regularize(torch.tensor(1.0), inputs=x, outputs=out)
    assert torch.allclose(got, expect, atol=1e-6)
    assert not any(p.requires_grad for p in sp.teacher.parameters())
