"""sparsecraft.report lists converted SparseLinear layers with their true nonzeros."""

from __future__ import annotations

import torch
from torch import nn

from sparsecraft.kernels import convert
from sparsecraft.report import report
from tests.kernels.helpers import sparse_weight


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    with torch.no_grad():
        model[0].weight.copy_(sparse_weight(16, 32, 0.75, seed=3))
        model[2].weight.copy_(sparse_weight(8, 16, 0.5, seed=4))
    return model


def test_converted_layers_are_listed_with_true_nonzeros():
    model = _model()
    before = report(model)
    nz0 = int(torch.count_nonzero(model[0].weight))
    convert(model, backend="torch-csr", targets=["^0$"])  # convert layer 0 only
    after = report(model)
    row = after.layer("0.weight")
    assert row.pattern == "packed:torch-csr" and row.shape == (16, 32)
    assert row.nonzeros == nz0 and row.numel == 16 * 32
    assert [r.name for r in after.layers] == ["0.weight", "2.weight"]  # module order
    assert after.layer("2.weight").pattern == "dense"
    # the weight now lives in buffers, yet the model totals are unchanged
    assert after.model_numel == before.model_numel
    assert after.model_nonzeros == before.model_nonzeros
    assert after.sparsity == row.sparsity  # the packed layer counts as a sparse layer
    assert report(model, targets=["^2"]).layers[0].name == "2.weight"
    assert "0.weight" not in [r.name for r in report(model, targets=["^2"]).layers]
