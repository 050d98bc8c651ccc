"""GPTQ: a hand-computed case, and agreement with an independent float64 column-by-column
reference over several column blocks."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.base import make_pruner
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import Unstructured
from sparsecraft.quant.grid import QuantSpec
from tests.oneshot.quant_reference import obs_sweep


def _stats(H: torch.Tensor) -> InputStats:
    st = InputStats(H.shape[0], hessian=True)
    st.H = H.clone().float()
    return st


def test_gptq_by_hand():
    # one row, two columns, H = [[2, 1], [1, 2]], no damping: U = chol(H^-1, upper) has
    # U01 / U00 = -1/2. Column 0: grid [-0.46875, 0.46875] -> s = 0.0625; 0.46875 -> 0.4375
    # (7.5 steps round to 8, clamped to 7). Error 0.03125 moves column 1 by -0.5 * -0.03125:
    # 0.09 -> 0.105625 -> 1.69 steps -> 2 steps = 0.125 (round to nearest alone gives 0.0625).
    gptq = make_pruner("gptq", quantize={"bits": 4, "group": 16}, percdamp=0.0)
    gptq.quant = QuantSpec(4, 2, True)  # a 2-input group for the hand case
    w = torch.tensor([[0.46875, 0.09]])
    new, keep = gptq.prune(w, _stats(torch.tensor([[2.0, 1.0], [1.0, 2.0]])), Unstructured(), 0.0)
    assert new.tolist() == [[0.4375, 0.125]] and keep.all()
    st = gptq.pop_quant()
    assert st.scale.tolist() == [[0.0625]] and gptq.pop_quant() is None


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_matches_reference_over_blocks(bits, sym):
    torch.manual_seed(bits * 10 + sym)
    rows, cols, group = 8, 256, 32
    X = torch.randn(512, cols) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols) / cols**0.5)
    H = X.t() @ X
    w = torch.randn(rows, cols) * 0.1
    gptq = make_pruner("gptq", quantize={"bits": bits, "group": group, "sym": sym})
    new, keep = gptq.prune(w, _stats(H), Unstructured(), 0.0)
    ref = obs_sweep(w, H, bits, group, sym)
    assert keep.all()
    assert torch.allclose(new.double(), ref, atol=1e-5), (new.double() - ref).abs().max()
    # and every weight is on the grid the method reports
    gptq.pop_quant().codes(new)


def test_gptq_refuses_sparsity_and_patterns():
    gptq = make_pruner("gptq", quantize={"bits": 4})
    with pytest.raises(SparsecraftError, match="gptq quantizes without pruning"):
        gptq.check_sparsity(0.5, [])
    with pytest.raises(SparsecraftError, match="cannot prune with pattern '2:4'"):
        gptq.check_pattern("2:4")
    with pytest.raises(SparsecraftError, match="bits must be one of 4, 8"):
        make_pruner("gptq", quantize={"bits": 2})


def test_dead_inputs_use_the_reference_hessian_scale():
    # Inputs that never fire get H_jj = 1 on SparseGPT's (2/n) X X^T scale (n = sequences); that
    # 1 enters the damping of every other column, so GPTQ must read the Hessian on that scale
    # (the raw sum X X^T here is 3/2 of it) -- as SparseGPT does, which shares the cached factor.
    torch.manual_seed(0)
    cols = 32
    X = torch.randn(3, 40, cols) * 0.005
    X[..., ::2] = 0.0
    st = InputStats(cols, hessian=True)
    st.add(X)
    w = torch.randn(5, cols) * 0.1
    new, _ = make_pruner("gptq", quantize={"bits": 8, "group": 16}).prune(w, st, Unstructured(), 0.0)
    x = X.reshape(-1, cols).double()
    H = (2.0 / 3) * x.t() @ x
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    w0 = w.double().masked_fill(dead.reshape(1, -1), 0.0)
    assert torch.allclose(new.double(), obs_sweep(w0, H, 8, 16, True), atol=1e-6)
