"""SparseLinear == nn.Linear for every backend (shapes, batch dims, bias), packing round trips."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.kernels import SparseLinear, backend_names, get_backend
from sparsecraft.masks import set_mask
from tests.kernels.helpers import sparse_weight, two_four_weight

NATIVE = {"csr16", "bitmap", "nm24"}


def _linear(out: int, inp: int, bias: bool, weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(inp, out, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


ALL = ["dense", "dense-t", "dense-addmm", "dense-mkldnn", "dense-numpy", "torch-csr", "csr16", "bitmap", "nm24"]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3), (2, 1, 4), (17,), (70,)])
def test_equals_nn_linear(request, backend, bias, lead):
    if backend in NATIVE:
        request.getfixturevalue("native_ok")
    out, inp = 24, 96
    w = two_four_weight(out, inp) if backend == "nm24" else sparse_weight(out, inp, 0.7)
    lin = _linear(out, inp, bias, w)
    sl = SparseLinear.from_linear(lin, backend)
    x = torch.randn(*lead, inp)
    y = sl(x)
    assert y.shape == (*lead, out)
    torch.testing.assert_close(y, lin(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch-csr", "csr16", "bitmap", "nm24"])
@pytest.mark.parametrize("shape", [(1, 64), (7, 32), (33, 160), (16, 100)])
def test_pack_round_trip(request, backend, shape):
    if backend in NATIVE:
        request.getfixturevalue("native_ok")
    impl = get_backend(backend)
    out, inp = shape
    w = two_four_weight(out, inp) if backend == "nm24" else sparse_weight(out, inp, 0.8, seed=out)
    if impl.supports(w):
        assert backend == "nm24" and inp % 32
        return
    packed = impl.pack(w)
    assert torch.equal(impl.to_dense(packed, shape), w)


def test_nm24_group_with_fewer_than_two_nonzeros(native_ok):
    w = two_four_weight(4, 32)
    w[0, :4] = torch.tensor([0.0, 0.0, 0.0, 3.0])
    w[1, :8] = 0
    impl = get_backend("nm24")
    packed = impl.pack(w)
    assert torch.equal(impl.to_dense(packed, (4, 32)), w)
    x = torch.randn(3, 32)
    torch.testing.assert_close(impl.matmul(packed, x, 4), x @ w.t(), rtol=1e-5, atol=1e-5)


def test_nm24_rejects_non_24_and_csr16_rejects_wide(native_ok):
    assert "2:4" in get_backend("nm24").supports(sparse_weight(4, 32, 0.1))
    assert "65536" in get_backend("csr16").supports(torch.zeros(1, 65537))


def test_native_rejects_fp16():
    assert "float32" in get_backend("bitmap").supports(torch.zeros(4, 4, dtype=torch.float16))


def test_masked_linear_uses_masked_weight():
    lin = nn.Linear(8, 4)
    keep = torch.rand(4, 8) > 0.5
    set_mask(lin, keep, apply=False)  # weight still dense underneath, forward must use the mask
    sl = SparseLinear.from_linear(lin, "torch-csr")
    assert torch.equal(sl.dense_weight(), lin.weight.detach() * keep)


def test_state_dict_deepcopy_and_repr():
    lin = _linear(6, 16, True, sparse_weight(6, 16, 0.5))
    sl = SparseLinear.from_linear(lin, "torch-csr")
    clone = copy.deepcopy(sl)
    x = torch.randn(3, 16)
    torch.testing.assert_close(clone(x), sl(x))
    assert any(k.startswith("packed_") for k in sl.state_dict())
    assert "torch-csr" in repr(sl)
    assert sl.nbytes == get_backend("torch-csr").nbytes(get_backend("torch-csr").pack(lin.weight))


def test_bad_backend_and_bad_input():
    lin = nn.Linear(8, 4)
    with pytest.raises(SparsecraftError, match="unknown kernel backend"):
        SparseLinear.from_linear(lin, "nope")
    sl = SparseLinear.from_linear(lin, "dense")
    with pytest.raises(RuntimeError, match="8"):
        sl(torch.randn(2, 5))


def test_auto_with_injected_measure_picks_fastest():
    lin = _linear(8, 32, True, sparse_weight(8, 32, 0.9))

    def measure(weight, batch, names):
        return {n: (0.5 if n == "torch-csr" else 1.0) for n in names}

    sl = SparseLinear.from_linear(lin, "auto", measure=measure)
    assert sl.backend == "torch-csr"
    assert sl.decision is not None and "torch-csr" in sl.decision.reason


def test_every_registered_backend_is_tested():
    # cuda-2:4: tests/kernels/test_cuda_semi.py; act-sparse: tests/kernels/test_backend_activation.py
    assert set(backend_names()) == {*ALL, "cuda-2:4", "act-sparse"}
