"""SET / RigL drop-grow rule (ALGORITHMS.md "SET / RigL update") on hand-checkable cases and
in full training loops: exact per-layer budgets, grown weights at 0 with reset optimizer state."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sparsecraft
from sparsecraft.methods import attach
from sparsecraft.methods.dynamic import drop_grow
from sparsecraft.methods.optimizer_state import param_state

from .dst_util import batches, nonzeros, tiny_mlp, train_step


def test_drop_grow_by_hand():
    w = torch.tensor([[0.5, -0.1, 0.0, 0.0], [0.3, 0.0, -0.8, 0.05]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    grow = torch.tensor([[0.0, 0.0, 9.0, 1.0], [0.0, 5.0, 0.0, 0.0]])
    # 5 active, f = 0.5 -> k = floor(2.5) = 2: drop |-0.1| and |0.05|; grow the 2 largest
    # scores among the now-inactive: (0, 2) = 9 and (1, 1) = 5
    new = drop_grow(w, mask, 0.5, grow, torch.Generator().manual_seed(0))
    expect = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(new, expect)
    assert int(new.sum()) == int(mask.sum())


def test_just_dropped_can_regrow():
    w = torch.tensor([0.1, 0.5, 0.0, 0.0])
    mask = torch.tensor([True, True, False, False])
    new = drop_grow(w, mask, 0.5, torch.tensor([10.0, 0.0, 1.0, 2.0]), torch.Generator())
    assert torch.equal(new, mask)  # 0.1 dropped and regrown: mask unchanged


def test_drop_fraction_is_cosine():
    m = attach(tiny_mlp(), None, method="rigl", total_steps=400, sparsity=0.8)
    T = 300  # 75% of 400
    assert m.update_rule.every == 100 and m.update_rule.stop == T
    for t in (0, 50, 150, 299, 300, 350):
        assert m.drop_fraction(t) == pytest.approx(0.15 * (1 + math.cos(math.pi * min(t, T) / T)))


@pytest.mark.parametrize("method", ["set", "rigl"])
@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_budgets_exact_and_grown_reset(method, opt_name):
    model = tiny_mlp()
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    m = attach(model, opt, method=method, total_steps=40, sparsity=0.8, update={"every": 4}, seed=3)
    budget = [int(m.mask(t).sum()) for t in m.targets]
    assert sum(budget) == sum(t.numel for t in m.targets) - math.floor(0.8 * sum(t.numel for t in m.targets))
    grown_any = False
    for step, batch in enumerate(batches(40), start=1):
        old = [m.mask(t).clone() for t in m.targets]
        train_step(model, opt, batch)
        for t, o, b in zip(m.targets, old, budget):
            keep = m.mask(t)
            assert int(keep.sum()) == b  # per-layer sparsity exactly unchanged
            assert torch.all(t.param[~keep] == 0)  # pruned weights exactly zero
            for state in param_state(opt, t.param).values():
                assert torch.all(state[~keep] == 0)
            grown = keep & ~o
            if grown.any():
                grown_any = True
                assert step % 4 == 0 and step < 30
                assert torch.all(t.param[grown] == 0)  # grown weights start at 0
                for state in param_state(opt, t.param).values():
                    assert torch.all(state[grown] == 0)  # and their moments are reset
        assert all(n <= b for n, b in zip(nonzeros(model), budget))
    assert grown_any
    assert len(m.dynamics.updates) == 7  # steps 4, 8, ..., 28 (stop at 30)
    assert all(u["dropped"] == u["grown"] for u in m.dynamics.updates)
    rep = sparsecraft.report(model)
    # each layer's reported target is its own ERK share (exactly its budget), not the model total
    expected = [1 - b / t.numel for b, t in zip(budget, m.targets)]
    assert rep.nonzeros <= sum(budget) and [layer.target for layer in rep.layers] == expected


def test_rigl_grows_largest_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1, bias=False)
    model = torch.nn.Sequential(lin)
    m = attach(model, None, method="rigl", total_steps=10, sparsity=0.5, update={"every": 1, "stop": 10},
               distribution="uniform", hooks=False)  # fmt: skip
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.4, -0.9, 0.0, 0.0]]))
    m.mask(m.targets[0]).copy_(torch.tensor([[True, True, False, False]]))
    lin.weight.grad = torch.tensor([[0.0, 0.0, -3.0, 1.0]])
    m.alpha = 1.0
    m.drop_fraction.initial = 1.0  # f(1) ~ 1 -> k = floor(~0.99 * 2) = 1
    entry = m.step()
    assert entry is not None and entry["dropped"] == 1 and entry["grown"] == 1
    # 0.4 dropped (smallest |w|), position 2 grown (|g| = 3 is the largest)
    assert m.mask(m.targets[0]).tolist() == [[False, True, True, False]]
    assert torch.equal(lin.weight, torch.tensor([[0.0, -0.9, 0.0, 0.0]]))


def test_set_and_rigl_deterministic_per_seed():
    outs = []
    for _ in range(2):
        model = tiny_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        m = attach(model, opt, method="set", total_steps=12, sparsity=0.7, update={"every": 3}, seed=1)
        for b in batches(12):
            train_step(model, opt, b)
        outs.append([v.clone() for v in m.masks().values()])
    assert all(torch.equal(a, b) for a, b in zip(*outs))


@given(
    n=st.integers(4, 60),
    density=st.floats(0.05, 0.95),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_drop_grow_properties(n, density, fraction, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g).round(decimals=1)  # many ties on purpose
    mask = torch.rand(n, generator=g) < density
    w = w * mask
    grow = torch.randn(n, generator=g).abs().round(decimals=1)
    new = drop_grow(w, mask, fraction, grow, g)
    active = int(mask.sum())
    k = math.floor(fraction * active)
    assert int(new.sum()) == active  # budget exactly unchanged
    assert int((mask & ~new).sum()) == int((~mask & new).sum()) <= k
    if 0 < k < active:
        threshold = w.abs()[mask].sort().values[k - 1]
        assert bool(torch.all(new[mask & (w.abs() > threshold)]))  # only the k smallest may go


def test_ties_are_broken_at_random_but_seeded():
    from sparsecraft.methods.dynamic import _k_extreme

    scores = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 5.0])
    picks = {tuple(sorted(_k_extreme(scores, 3, True, torch.Generator().manual_seed(s)).tolist())) for s in range(40)}
    assert all(5 in p and len(p) == 3 and 0 not in p for p in picks)  # 5 always, then 2 of the four 1.0s
    assert len(picks) > 3  # different seeds pick different tied positions
    a = _k_extreme(scores, 2, False, torch.Generator().manual_seed(7))
    b = _k_extreme(scores, 2, False, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and 0 in a.tolist()
