"""The transform registry, the wrapper and restore."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecraft.activations import TRANSFORMS, SparseActivation, apply_transform, find_sites, restore
from sparsecraft.activations.topk import TopKRule
from sparsecraft.errors import SparsecraftError
from sparsecraft.registry import all_registries


def test_registry_names_and_listing():
    assert TRANSFORMS.names() == ["relu", "threshold", "topk"]
    assert TRANSFORMS in all_registries()
    assert dict(TRANSFORMS.summary())["topk"].startswith("Top-k activation")


def test_spec_forms_and_unknown_name():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    apply_transform(model, {"type": "topk", "k": 2})
    assert isinstance(model[2], SparseActivation) and model[2].rule.k == 2
    apply_transform(model, "topk", k=3)  # replaces the rule, does not nest
    assert isinstance(model[2].inner, nn.Linear) and model[2].rule.k == 3
    with pytest.raises(SparsecraftError, match="unknown activation transform 'relu6'; allowed: relu, threshold, topk"):
        apply_transform(model, "relu6")


def test_wrapper_forward_and_restore():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    ref = model(x)
    inner = model[2]
    model[2] = SparseActivation(TopKRule(8, 8), inner)  # k = width: the identity
    assert torch.equal(model(x), ref)
    assert find_sites(model)[0].projection is inner
    assert restore(model) == 1 and model[2] is inner
