"""convert(): per-layer decisions, deterministic with an injected measurement."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from sparsecraft import prune
from sparsecraft.errors import SparsecraftError
from sparsecraft.kernels import SparseLinear, convert
from tests.kernels.helpers import sparse_weight


def _mlp(sparsity: float = 0.9) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.copy_(sparse_weight(*m.weight.shape, sparsity))
    return model


def _fixed(times: dict[str, float]):
    def measure(weight, batch, names):
        return {n: times.get(n, 10.0) for n in names}

    return measure


def test_keeps_dense_when_told_sparse_is_slower():
    model = _mlp()
    rep = convert(model, measure=_fixed({"dense": 1.0, "torch-csr": 2.0, "csr16": 1.5, "bitmap": 1.2}))
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    assert [x.backend for x in rep.layers] == ["dense"] * 3
    assert all("kept dense" in x.reason and "bitmap" in x.reason for x in rep.layers)


def test_converts_when_sparse_is_faster_and_output_matches():
    model = _mlp()
    ref = _mlp()
    rep = convert(model, measure=_fixed({"dense": 1.0, "torch-csr": 0.4}))
    assert [x.backend for x in rep.layers] == ["torch-csr"] * 3
    assert all(x.speedup == pytest.approx(2.5) for x in rep.layers)
    x = torch.randn(5, 32)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    assert rep.to_dict()["converted"] == 3 and "torch-csr" in str(rep)


def test_margin_guards_against_noise():
    rep = convert(_mlp(), measure=_fixed({"dense": 1.0, "torch-csr": 0.99}))
    assert all(x.backend == "dense" for x in rep.layers)


def test_faster_dense_variant_is_used():
    model = _mlp()
    rep = convert(model, measure=_fixed({"dense": 1.0, "dense-t": 0.5, "torch-csr": 0.8}))
    assert [x.backend for x in rep.layers] == ["dense-t"] * 3
    assert isinstance(model[0], SparseLinear) and model[0].backend == "dense-t"
    assert rep.converted == []  # a dense call is not a sparse conversion


def test_low_sparsity_tied_and_ignored_are_reported():
    model = _mlp()
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(48, 32))
    tied = nn.Linear(16, 4)
    model.append(tied)
    model[4].weight = tied.weight  # share one parameter
    calls = []

    def measure(weight, batch, names):
        calls.append(tuple(weight.shape))
        return {n: (0.1 if n == "torch-csr" else 1.0) for n in names}

    rep = convert(model, measure=measure, ignore=["2"])
    by = {x.name: x for x in rep.layers}
    assert "2" not in by
    assert "min_sparsity" in by["0"].reason and by["0"].backend == "(unchanged)"
    assert "tied" in by["4"].reason and "tied" in by["5"].reason
    assert calls == []  # nothing left to measure


def test_same_shape_layers_share_one_measurement(caplog):
    model = nn.Sequential(*[nn.Linear(32, 32) for _ in range(3)])
    with torch.no_grad():
        for m in model:
            m.weight.copy_(sparse_weight(32, 32, 0.9, seed=1))
    calls = []

    def measure(weight, batch, names):
        calls.append(batch)
        return {n: (0.1 if n == "torch-csr" else 1.0) for n in names}

    with caplog.at_level(logging.INFO, logger="sparsecraft.kernels"):
        rep = convert(model, batch=8, measure=measure)
    assert calls == [8]
    assert "measured on 0" in rep.layers[2].reason
    assert sum("convert" in r.message for r in caplog.records) == 3


def test_forced_backend_and_masked_model():
    model = _mlp(0.0)
    prune(model, 0.8, pattern="unstructured")
    ref = _mlp(0.0)
    ref.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(3, 32)
    want = model(x)
    rep = convert(model, backend="torch-csr")
    assert all(x.reason == "backend requested by the caller" for x in rep.layers if x.sparsity > 0.2)
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)


def test_forced_backend_that_cannot_run_warns():
    model = _mlp()
    with pytest.warns(RuntimeWarning, match="cannot run"):
        rep = convert(model, backend="nm24")
    assert all(x.backend == "(unchanged)" for x in rep.layers)


def test_unknown_backend():
    with pytest.raises(SparsecraftError, match="allowed: auto"):
        convert(_mlp(), backend="fast")


def test_sparse_must_be_clearly_faster_than_dense():
    # the rule: sparse only at <= 0.9x the fastest dense call
    rep = convert(_mlp(), measure=_fixed({"dense": 1.0, "csr16": 0.91}))
    assert all(x.backend == "dense" and "needs <= 0.90x" in x.reason for x in rep.layers)
    rep = convert(_mlp(), measure=_fixed({"dense": 1.0, "csr16": 0.9}))
    assert all(x.backend == "csr16" for x in rep.layers)


def test_sparse_is_compared_with_the_fastest_dense_call():
    # csr16 beats nn.Linear by 20%, but dense-addmm is faster still: keep dense, via addmm
    model = _mlp()
    rep = convert(model, measure=_fixed({"dense": 1.0, "dense-addmm": 0.7, "csr16": 0.8}))
    assert [x.backend for x in rep.layers] == ["dense-addmm"] * 3
    assert all("dense-addmm" in x.reason for x in rep.layers)


def test_nn_linear_kept_unless_another_dense_call_is_clearly_faster():
    model = _mlp()
    rep = convert(model, measure=_fixed({"dense": 1.0, "dense-t": 0.98}))  # within noise
    assert [x.backend for x in rep.layers] == ["dense"] * 3
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    rep = convert(_mlp(), measure=_fixed({"dense": 1.0, "dense-t": 0.95}))
    assert [x.backend for x in rep.layers] == ["dense-t"] * 3


# --------------------------------------------------------------- activation-sparse layers
def _topk_mlp(k: int = 12):
    from sparsecraft.activations import apply_transform

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 16), nn.GELU(), nn.Linear(16, 4))
    apply_transform(model, "topk", k=k)
    return model


def test_sparse_input_layer_gets_act_sparse_when_faster(native_ok):
    model = _topk_mlp()
    x = torch.randn(3, 16)
    want = model(x)
    seen = []

    def measure(weight, batch, names):
        seen.append(sorted(names))
        return {n: (0.5 if n == "act-sparse" else 1.0) for n in names}

    rep = convert(model, measure=measure)
    by = {r.name: r for r in rep.layers}
    assert by["2.inner"].backend == "act-sparse" and by["2.inner"].input_sparsity == pytest.approx(0.75)
    assert "input 75.0% zeros" in by["2.inner"].reason
    assert by["4.inner"].input_sparsity == pytest.approx(0.25)
    assert by["4.inner"].backend == "act-sparse"
    assert by["0"].backend == "(unchanged)" and by["0"].input_sparsity is None  # dense weight, dense input
    assert all("act-sparse" in names and "dense" in names and "csr16" not in names for names in seen)
    assert isinstance(model[2].inner, SparseLinear) and model[2].inner.backend == "act-sparse"
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)


def test_sparse_input_layer_kept_dense_when_not_faster():
    model = _topk_mlp()
    rep = convert(model, measure=_fixed({"dense": 1.0, "act-sparse": 0.95}))
    by = {r.name: r for r in rep.layers}
    assert by["2.inner"].backend == "dense" and "needs <= 0.90x" in by["2.inner"].reason
    assert not any(isinstance(m, SparseLinear) for m in model.modules())


def test_low_input_sparsity_and_forced_act_sparse(native_ok):
    model = _topk_mlp()
    rep = convert(model, min_sparsity=0.5, measure=_fixed({"dense": 1.0, "act-sparse": 0.1}))
    by = {r.name: r for r in rep.layers}
    assert by["4.inner"].backend == "(unchanged)" and "input only 25.0% zeros" in by["4.inner"].reason
    model = _topk_mlp()
    rep = convert(model, backend="act-sparse")
    by = {r.name: r for r in rep.layers}
    assert by["2.inner"].backend == "act-sparse" and by["4.inner"].backend == "act-sparse"
    assert by["0"].backend == "(unchanged)" and "not activation-sparse" in by["0"].reason
