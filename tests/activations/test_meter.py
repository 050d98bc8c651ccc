"""ActivationMeter: exact counts checked by hand, bit-identical outputs, every family."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsecraft.activations.meter import LOG10_EDGES, ActivationMeter, measure
from sparsecraft.errors import SparsecraftError
from tests.activations.tiny import FAMILIES, inputs, make, run


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_outputs_bit_identical_with_and_without_meter(family):
    model = make(family)
    x = inputs(family)
    ref = run(model, family, x)
    with ActivationMeter(model) as meter:
        got = run(model, family, x)
    assert torch.equal(ref, got)
    rep = meter.report()
    assert len(rep.layers) == 2 and all(s.tokens == 30 for s in rep.layers)
    assert torch.equal(run(model, family, x), ref)  # hooks are gone


def test_counts_by_hand():
    # 3 tokens x 4 neurons after ReLU: zeros where the pre-activation is <= 0
    pre = torch.tensor([[1.0, -2.0, 0.0005, 3.0],
                        [-1.0, -1.0, -1.0, 0.02],
                        [0.5, 0.25, -3.0, 200.0]])
    model = nn.Sequential(nn.Identity(), nn.ReLU(), nn.Linear(4, 1))
    with ActivationMeter(model, eps=1e-3) as meter:
        model(pre)
    s = meter.report().layers[0]
    assert s.tokens == 3 and s.hidden == 4
    assert s.zero_fraction == 5 / 12          # -2 ; -1, -1, -1 ; -3 -> 1 + 3 + 1
    assert s.eps_fraction == 6 / 12           # plus 0.0005
    assert s.per_token_zero["min"] == 0.25 and s.per_token_zero["max"] == 0.75
    assert math.isclose(s.per_token_zero["mean"], 5 / 12)
    assert s.per_token_eps["p50"] == 0.5
    assert s.dead_neurons == 1                # neuron 2: 0.0005, 0, 0 never above eps
    h = s.histogram
    assert h["zeros"] == 5 and sum(h["counts"]) + h["below"] + h["above"] == 7
    edges = LOG10_EDGES.tolist()

    def bin_of(v):
        return max(i for i, e in enumerate(edges) if e <= math.log10(v))

    expect = [0] * (len(edges) - 1)
    for v in (1.0, 0.0005, 3.0, 0.02, 0.5, 0.25, 200.0):
        expect[bin_of(v)] += 1
    assert h["counts"] == expect


def test_dead_neurons_and_reset():
    model = nn.Sequential(nn.Identity(), nn.ReLU(), nn.Linear(3, 1))
    meter = ActivationMeter(model).attach()
    model(torch.tensor([[1.0, -1.0, 2.0], [1.0, -5.0, -2.0]]))
    assert meter.report().layers[0].dead_neurons == 1
    meter.reset()
    model(torch.tensor([[1.0, 1.0, 1.0]]))
    s = meter.report().layers[0]
    assert s.tokens == 1 and s.dead_neurons == 0 and s.zero_fraction == 0
    meter.detach()


def test_measure_helper_and_totals():
    model = make("opt")
    rep = measure(model, inputs("opt", n=4, seq_len=8))
    assert sum(s.tokens for s in rep.layers) == 64
    manual = sum(s.zero_fraction for s in rep.layers) / 2
    assert math.isclose(rep.zero_fraction, manual)
    assert 0.3 < rep.zero_fraction < 0.7  # ReLU on random pre-activations
    assert rep.to_dict()["layers"][0]["name"] == "model.decoder.layers.0.fc2"
    assert "exact zeros" in str(rep)


def test_bad_eps():
    with pytest.raises(SparsecraftError, match="eps must be >= 0, got -1"):
        ActivationMeter(make("sequential"), eps=-1)
