"""GMP: the cubic schedule s_t = s_f (1 - (1 - p)^3) reached exactly at update steps, monotone
masks, and the "Journey Matters" window (25% -> 75%) as one config value."""

import math

import pytest
import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.methods import attach

from .dst_util import batches, tiny_mlp, train_step


def cubic(t, t0, t1, sf):
    p = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
    return sf * (1 - (1 - p) ** 3)


def test_gmp_follows_cubic_schedule_and_is_monotone():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    m = attach(model, opt, method="gmp", total_steps=40, sparsity=0.9, start=4, end=28, every=5)
    assert m.window == (4, 28)
    prev = {k: v.clone() for k, v in m.masks().items()}
    sizes = [t.numel for t in m.targets]
    seen = []
    for step, b in enumerate(batches(40), start=1):
        train_step(model, opt, b)
        for k, v in m.masks().items():
            assert not torch.any(v & ~prev[k])  # pruned weights never come back
            prev[k] = v.clone()
        if m.update_rule.should_update(step):
            seen.append(step)
            s = cubic(step, 4, 28, 0.9)
            for t, n in zip(m.targets, sizes):  # uniform distribution: exact floor per layer
                assert int((~m.mask(t)).sum()) == math.floor(s * n + 1e-6)
    assert seen == [4, 9, 14, 19, 24, 28]  # every 5 from t0, plus exactly t1
    assert sparsecraft.report(model).sparsity == pytest.approx(0.9, abs=0.01)


def test_journey_window_is_one_line():
    m = attach(tiny_mlp(), None, method="gmp", total_steps=1000, sparsity=0.8, window="journey")
    assert m.window == (250, 750)
    assert m.target_sparsity(250) == 0.0 and m.target_sparsity(750) == pytest.approx(0.8)
    assert m.target_sparsity(500) == pytest.approx(0.8 * (1 - 0.5**3))
    # average prunable fraction over the whole run: 1 - 0.625 s_f (ALGORITHMS.md)
    ramp = [1 - m.target_sparsity(t) for t in range(0, 1001)]
    assert sum(ramp) / len(ramp) == pytest.approx(1 - 0.625 * 0.8, abs=2e-3)
    with pytest.raises(SparsecraftError, match="window"):
        attach(tiny_mlp(), None, method="gmp", total_steps=10, window="nope")


def test_gmp_training_loop_runs_with_batches():
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    attach(model, opt, method="gmp", total_steps=10, sparsity=0.5, every=2, end=1.0)
    for b in batches(10):
        train_step(model, opt, b)
    assert sparsecraft.report(model).sparsity == pytest.approx(0.5, abs=0.01)
