"""Neuron-norm thresholds: the rule by hand, per-layer installation, exact zeros."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.activations import apply_transform, find_sites, thresholds_of
from sparsecraft.activations.threshold import Threshold, ThresholdRule, column_norms
from sparsecraft.errors import SparsecraftError
from tests.activations.tiny import inputs, make, run


def test_rule_by_hand():
    w = torch.tensor([[3.0, 0.0, 1.0], [4.0, 0.0, 0.0]])  # column norms 5, 0, 1
    assert column_norms(w).tolist() == [5.0, 0.0, 1.0]
    a = torch.tensor([[0.125, 7.0, -0.5], [-0.25, 1.0, 0.375]])  # n = (0.625, 0, 0.5), (1.25, 0, 0.375)
    rule = ThresholdRule(0.5, column_norms(w))
    out = rule(a)
    assert out.tolist() == [[0.125, 0.0, 0.0], [-0.25, 0.0, 0.0]]  # n <= 0.5 goes (0.5 included)
    assert not torch.signbit(out).logical_and(out == 0).any()  # +0.0, not -0.0
    # t = 0 drops only what contributes nothing (here: a column of zeros)
    assert ThresholdRule(0.0, column_norms(w))(a).tolist() == [[0.125, 0.0, -0.5], [-0.25, 0.0, 0.375]]
    assert ThresholdRule(0.625, column_norms(w))(a).tolist() == [[0.0, 0.0, 0.0], [-0.25, 0.0, 0.0]]
    assert ThresholdRule(1.25, column_norms(w))(a).abs().sum() == 0


def test_per_layer_thresholds_installed_and_reported():
    model = make("llama")
    x = inputs("llama")
    apply_transform(model, "threshold", thresholds=[0.0, 0.0])
    ref_zero = run(model, "llama", x)  # t = 0: nothing nonzero removed
    assert thresholds_of(model) == [0.0, 0.0]
    Threshold([0.01, 0.02], expected=[0.3, 0.4]).apply(model)
    assert thresholds_of(model) == [0.01, 0.02]
    sites = find_sites(model)
    assert sites[1].wrapper.sparsecraft_input_sparsity == 0.4
    assert not torch.equal(run(model, "llama", x), ref_zero)


def test_zero_threshold_is_the_dense_model():
    model = make("opt")
    x = inputs("opt")
    ref = run(model, "opt", x)
    Threshold([0.0, 0.0]).apply(model)
    assert torch.equal(run(model, "opt", x), ref)


@pytest.mark.parametrize("ts,match", [
    ([0.1], "1 thresholds for a model with 2 MLP layers"),
    ([0.1, -1.0], "finite number >= 0, got -1.0"),
    ([0.1, float("inf")], "finite number >= 0, got inf"),
])
def test_bad_thresholds(ts, match):
    with pytest.raises(SparsecraftError, match=match):
        Threshold(ts).apply(make("llama"))
