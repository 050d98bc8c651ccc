"""Top-k activation: exactly k kept per token, by magnitude or value, trainable."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.activations import ActivationMeter, apply_transform, find_sites, restore
from sparsecraft.activations.topk import TopK, TopKRule
from sparsecraft.errors import SparsecraftError
from tests.activations.tiny import FAMILIES, inputs, make, run


def test_rule_by_hand():
    a = torch.tensor([[3.0, -5.0, 1.0, 2.0], [0.5, 0.25, -0.1, 4.0]])
    assert TopKRule(2, 4)(a).tolist() == [[3.0, -5.0, 0.0, 0.0], [0.5, 0.0, 0.0, 4.0]]
    assert TopKRule(2, 4, by="value")(a).tolist() == [[3.0, 0.0, 0.0, 2.0], [0.5, 0.0, 0.0, 4.0]]
    assert TopKRule(4, 4)(a) is a
    assert TopKRule(1, 4).expected_sparsity() == 0.75


def test_gradient_reaches_only_kept_entries():
    a = torch.tensor([[3.0, -5.0, 1.0, 2.0]], requires_grad=True)
    TopKRule(2, 4)(a).mul(torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert a.grad.tolist() == [[1.0, 2.0, 0.0, 0.0]]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_token_keeps_exactly_k(family):
    model = make(family)
    x = inputs(family)
    ref = run(model, family, x)
    sites = apply_transform(model, "topk", k=5)
    with ActivationMeter(model, eps=0.0) as meter:
        run(model, family, x)
    for s, st in zip(sites, meter.report().layers):
        want = 1 - 5 / s.hidden
        assert st.per_token_zero["min"] == pytest.approx(want) and st.per_token_zero["max"] == pytest.approx(want)
    assert restore(model) == 2
    assert torch.equal(run(model, family, x), ref)


def test_fraction_k_and_training_step():
    model = make("llama")
    TopK(0.25).apply(model)
    assert [s.wrapper.rule.k for s in find_sites(model)] == [16, 16]
    ids = inputs("llama")
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert model.model.layers[0].mlp.gate_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("k,match", [
    (65, "top-k k=65 is outside \\[1, 64\\] \\(the MLP hidden width\\)"),
    (0, "top-k k=0 is outside"),
    ("8", "must be an integer, got '8'"),
    (1.5, "as a fraction must be in \\(0, 1\\], got 1.5"),
])
def test_bad_k(k, match):
    model = make("llama")
    with pytest.raises(SparsecraftError, match=match):
        apply_transform(model, "topk", k=k)
    assert all(s.wrapper is None for s in find_sites(model))


def test_bad_ranking():
    with pytest.raises(SparsecraftError, match="top-k by 'size' is not a ranking; allowed: magnitude, value"):
        TopK(4, by="size")
