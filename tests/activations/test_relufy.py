"""ReLU-fication: the activation function becomes (shifted) ReLU where it acts; restore undoes it."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.activations import ActivationMeter, apply_transform, find_sites, restore, unwrap
from sparsecraft.activations.relufy import ReLUfication, ShiftedReLU
from sparsecraft.errors import SparsecraftError
from tests.activations.tiny import FAMILIES, inputs, make, run


def test_shifted_relu_by_hand():
    x = torch.tensor([-1.0, 0.5, 1.0, 2.0])
    assert ShiftedReLU()(x).tolist() == [0.0, 0.5, 1.0, 2.0]
    assert ShiftedReLU(1.0)(x).tolist() == [0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_relufied_model_has_exact_zeros_and_restores(family):
    model = make(family)
    x = inputs(family)
    ref = run(model, family, x)
    originals = [type(s.activation) for s in find_sites(model)]
    ReLUfication(shift=0.0).apply(model)
    assert all(isinstance(s.activation, ShiftedReLU) for s in find_sites(model))
    with ActivationMeter(model, eps=0.0) as meter:
        run(model, family, x)
    assert meter.report().zero_fraction > 0.2  # about half the pre-activations are negative
    assert restore(model) == 2
    assert [type(s.activation) for s in find_sites(model)] == originals
    assert torch.equal(run(model, family, x), ref)


def test_gated_mlp_relu_on_the_gate():
    model = make("llama")
    apply_transform(model, "relu", shift=0.05)
    mlp = model.model.layers[0].mlp
    x = torch.randn(3, 32)
    want = torch.relu(mlp.gate_proj(x) - 0.05) * mlp.up_proj(x)
    seen = {}
    mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("a", a[0]))
    mlp(x)
    torch.testing.assert_close(seen["a"], want)


def test_relufy_twice_keeps_the_first_original_and_unwrap_keeps_relu():
    model = make("gpt2")
    first = type(find_sites(model)[0].activation)
    apply_transform(model, "relu")
    apply_transform(model, "relu", shift=0.1)
    apply_transform(model, "topk", k=3)
    assert unwrap(model) == 2 and isinstance(find_sites(model)[0].activation, ShiftedReLU)
    restore(model)
    assert type(find_sites(model)[0].activation) is first


@pytest.mark.parametrize("shift", [float("nan"), "1", True])
def test_bad_shift(shift):
    with pytest.raises(SparsecraftError, match="ReLU shift must be a finite number"):
        ReLUfication(shift=shift)
