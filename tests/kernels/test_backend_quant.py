"""The quant-* backends: SparseLinear == the dequantized nn.Linear, to_dense is the stored weight
bit for bit, group detection, and convert(auto) on quantized layers never taking a sparse kernel
that is not at least 10% faster than the dense quantized one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.kernels import SparseLinear, convert
from sparsecraft.kernels.backend_quant import group_size
from sparsecraft.quant.grid import QuantSpec, rtn
from sparsecraft.quant.state import QuantState, set_quant
from tests.oneshot.tiny import calib_ids, tiny_llama


def _qlinear(keep: torch.Tensor, bits: int = 4, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(keep.shape[1], keep.shape[0], bias=bias)
    deq, s, z = rtn(lin.weight.detach() * keep, QuantSpec(bits, 32, False))
    with torch.no_grad():
        lin.weight.copy_(deq)
    set_quant(lin, QuantState(QuantSpec(bits, 32, False), s, z))
    return lin


@pytest.mark.parametrize("backend", ["quant-dense", "quant-bitmap", "quant-group"])
@pytest.mark.parametrize("bits", [4, 8])
def test_backends_equal_the_dequantized_linear(native_ok, backend, bits):
    keep = (torch.rand(48, 128 // 8) > 0.4).repeat_interleave(8, 1)
    lin = _qlinear(keep, bits)
    sl = SparseLinear.from_linear(lin, backend)
    for lead in [(1,), (3,), (2, 5)]:
        x = torch.randn(*lead, 128)
        assert torch.allclose(sl(x), lin(x), atol=1e-5)
    assert torch.equal(sl.dense_weight(), lin.weight.detach())
    assert sl.nbytes < lin.weight.numel() * 4 / (3 if bits == 8 else 6)  # vs float32


def test_group_size_picks_the_smallest_layout():
    keep = (torch.rand(16, 8) > 0.5).repeat_interleave(16, 1)
    assert group_size(keep) == 16
    holes = keep.clone()
    holes[:, ::16] = False  # a few zeros inside kept groups: still groups of 16
    assert group_size(holes) == 16
    assert group_size(torch.rand(16, 128) > 0.5) is None  # unstructured: the element bitmap is smaller


def test_unquantized_layer_is_refused(native_ok):
    with pytest.raises(SparsecraftError, match="not quantized"):
        SparseLinear.from_linear(nn.Linear(32, 8), "quant-dense")
    with pytest.raises(SparsecraftError, match="'quant-group' cannot run this layer: zeros do not come in groups"):
        SparseLinear.from_linear(_qlinear(torch.rand(8, 64) > 0.5), "quant-group")


def test_convert_auto_rule_on_quantized_layers(native_ok):
    m = tiny_llama()
    sparsecraft.prune(m, 0.5, method="gqsa", group=16, quantize={"bits": 4, "group": 16}, calib=calib_ids(),
                      progress=False)

    def sparse_slightly_faster(weight, batch, names):  # 0.95x: not enough
        return {n: {"dense": 2.0, "quant-dense": 1.0}.get(n, 0.95) for n in names}

    def sparse_much_faster(weight, batch, names):
        return {n: {"dense": 2.0, "quant-dense": 1.0, "quant-bitmap": 0.6}.get(n, 0.5) for n in names}

    a = copy.deepcopy(m)
    rep = convert(a, measure=sparse_slightly_faster)
    chosen = {x.backend for x in rep.layers if x.name.startswith("model.layers")}
    assert chosen == {"quant-dense"}
    b = copy.deepcopy(m)
    rep = convert(b, measure=sparse_much_faster)
    chosen = {x.backend for x in rep.layers if x.name.startswith("model.layers")}
    assert chosen == {"quant-group"}  # GQSA's groups: the group kernel is a candidate
    x = calib_ids(1, 8)
    assert torch.allclose(m(x).logits, b(x).logits, atol=1e-4)
