"""GQSA: group sparsity chosen by summed OBS saliency (a hand case with H = I), the pattern rules,
and the end-to-end tiny-model run (whole groups zero, kept weights on the grid)."""

from __future__ import annotations

import pytest
import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.base import make_pruner
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import Block, Unstructured
from sparsecraft.quant.grid import QuantSpec
from sparsecraft.quant.state import get_quant
from tests.oneshot.quant_reference import first_block_mask, obs_sweep
from tests.oneshot.tiny import calib_ids, tiny_llama


def test_group_mask_and_grid_by_hand():
    # H = I, no damping: U = I, so saliency = sum of w^2 per group and there is no error
    # feedback. Groups of 4: energies 0.07 and 0.5625 -> the first group goes; the second is
    # rounded to its own grid: max 0.5 -> s = 1/15 (float16 0.066650390625), codes -8..7.
    w = torch.tensor([[0.1, -0.2, 0.1, 0.1, 0.5, 0.5, -0.25, 0.0]])
    st = InputStats(8, hessian=True)
    st.H = torch.eye(8)
    gqsa = make_pruner("gqsa", group=4, percdamp=0.0)
    gqsa.quant = QuantSpec(4, 8, True)
    new, keep = gqsa.prune(w, st, Block(1, 4), 0.5)
    assert keep.tolist() == [[False] * 4 + [True] * 4]
    s = float(torch.tensor(1 / 15, dtype=torch.float16))
    expect = [0.0] * 4 + [s * 7, s * 7, s * round(-0.25 / s), 0.0]
    assert new[0].tolist() == pytest.approx(expect, abs=0)


def test_pattern_rules():
    g = make_pruner("gqsa", group=8)
    assert g.check_pattern(Unstructured()) == Block(1, 8)
    assert g.check_pattern("block:1x16") == Block(1, 16)
    for bad in ("2:4", "block:2x4", "block:1x32"):
        with pytest.raises(SparsecraftError, match="gqsa prunes groups of consecutive inputs"):
            g.check_pattern(bad)
    with pytest.raises(SparsecraftError, match="gqsa group must be one of 4, 8, 16"):
        make_pruner("gqsa", group=5)


def test_gqsa_end_to_end_whole_groups():
    m = tiny_llama()
    rep = sparsecraft.prune(m, 0.5, method="gqsa", group=8, quantize={"bits": 4, "group": 16},
                            calib=calib_ids(), progress=False)
    assert rep.info["pattern"] == "block:1x8"
    for layer in (m.model.layers[0].self_attn.q_proj, m.model.layers[1].mlp.down_proj):
        keep = layer.weight_mask.reshape(layer.weight.shape[0], -1, 8)
        assert (keep.all(-1) == keep.any(-1)).all()  # whole groups
        assert keep.float().mean() == pytest.approx(0.5, abs=0.02)
        get_quant(layer).codes(layer.weight.detach())


def test_dead_inputs_use_the_reference_hessian_scale():
    # Half the inputs never fire. SparseGPT's rule gives them H_jj = 1 on the (2/n) X X^T scale
    # (n = calibration sequences), so that scale sets the damping of every other column. GQSA
    # must use the same scale as SparseGPT; the raw sum X X^T (here 3x larger) damps differently.
    torch.manual_seed(0)
    cols, g = 32, 4
    X = torch.randn(3, 40, cols) * 0.005
    X[..., ::2] = 0.0
    st = InputStats(cols, hessian=True)
    st.add(X)  # 3 sequences: H = (2/3) sum x x^T
    w = torch.randn(5, cols) * 0.1
    gqsa = make_pruner("gqsa", group=g, quantize={"bits": 4, "group": 16})
    new, keep = gqsa.prune(w, st, Block(1, g), 0.5)
    x = X.reshape(-1, cols).double()
    H = (2.0 / 3) * x.t() @ x
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    w0 = w.double().masked_fill(dead.reshape(1, -1), 0.0)
    mask = first_block_mask(w0, H, 0.5, g=g)
    assert torch.equal(~keep, mask)
    assert torch.allclose(new.double(), obs_sweep(w0, H, 4, 16, True, mask), atol=1e-6)
