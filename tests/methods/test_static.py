"""Static sparse training: random ERK budgets (ALGORITHMS.md test vector), fixed masks,
pruned weights exactly zero under SGD momentum + weight decay and AdamW."""

import math

import pytest
import torch
from torch import nn

from sparsecraft.masks import set_mask
from sparsecraft.methods import attach
from sparsecraft.methods.optimizer_state import param_state

from .dst_util import batches, tiny_mlp, train_step


def test_erk_budgets_match_the_test_vector():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    m = attach(model, None, method="static", total_steps=10, sparsity=0.9)
    dens = [float(m.mask(t).float().mean()) for t in m.targets]
    assert dens[0] == pytest.approx(0.0796, abs=1e-4)
    assert dens[1] == pytest.approx(0.2302, abs=1e-4)
    assert dens[2] == 1.0
    total = sum(t.numel for t in m.targets)
    assert sum(int(m.mask(t).sum()) for t in m.targets) == total - math.floor(0.9 * total)


def test_uniform_and_seeded_random():
    a = attach(tiny_mlp(), None, method="static", total_steps=5, sparsity=0.5, distribution="uniform", seed=1)
    b = attach(tiny_mlp(), None, method="static", total_steps=5, sparsity=0.5, distribution="uniform", seed=1)
    c = attach(tiny_mlp(), None, method="static", total_steps=5, sparsity=0.5, distribution="uniform", seed=2)
    assert all(float(v.float().mean()) == 0.5 for v in a.masks().values())
    assert all(torch.equal(x, y) for x, y in zip(a.masks().values(), b.masks().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.masks().values(), c.masks().values()))


def test_static_from_criterion_magnitude():
    model = tiny_mlp()
    w0 = model[0].weight.detach().abs().clone()
    m = attach(
        model, None, method="static", total_steps=5, sparsity=0.75, distribution="uniform", criterion="magnitude"
    )
    keep = m.mask(m.targets[0])
    assert w0[keep].min() >= w0[~keep].max()


@pytest.mark.parametrize("opt_name", ["sgd", "adamw", "adam-l2"])
def test_pruned_weights_stay_exactly_zero(opt_name):
    model = tiny_mlp()
    params = model.parameters()
    if opt_name == "sgd":
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)
    elif opt_name == "adamw":
        opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.2)
    else:
        opt = torch.optim.Adam(params, lr=0.05, weight_decay=0.2)
    m = attach(model, opt, method="static", total_steps=20, sparsity=0.8)
    masks = {k: v.clone() for k, v in m.masks().items()}
    for b in batches(20):
        train_step(model, opt, b)
        for t in m.targets:
            assert torch.equal(m.mask(t), masks[t.name])
            assert torch.all(t.param[~masks[t.name]] == 0)
            states = param_state(opt, t.param)
            assert states  # momentum / moments exist and are zero where pruned
            for st in states.values():
                assert torch.all(st[~masks[t.name]] == 0)
        assert m.step_count > 0


def test_from_model_keeps_existing_masks():
    model = tiny_mlp()
    keep = torch.rand(model[0].weight.shape) > 0.5
    set_mask(model[0], keep)
    m = attach(model, None, method="static", total_steps=3, from_model=True, targets=["^0$"])
    assert torch.equal(m.mask(m.targets[0]), keep)


def test_unhooked_loop_equals_hooked_loop():
    """hooks=False + method.step() after optimizer.step() gives the same weights."""
    outs = []
    for hooks in (True, False):
        model = tiny_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        m = attach(model, opt, method="static", total_steps=8, sparsity=0.7, hooks=hooks)
        for b in batches(8):
            train_step(model, opt, b)
            m.step()
        assert m.step_count == 8
        outs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*outs))
