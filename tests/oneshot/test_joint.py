"""SparseGPT's joint prune-and-quantize sweep (unstructured, N:M, groups) against the independent
reference, and the end-to-end contract on a tiny model: pruned weights are zero, kept ones on the
reported grid, masks exact, quantization buffers attached."""

from __future__ import annotations

import pytest
import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.base import make_pruner
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import NM, Block, Unstructured
from sparsecraft.quant.state import get_quant, quantized_params
from tests.oneshot.quant_reference import first_block_mask, obs_sweep
from tests.oneshot.tiny import calib_ids, tiny_llama


def _problem(seed: int, rows: int = 6, cols: int = 64):
    torch.manual_seed(seed)
    X = torch.randn(300, cols) * torch.linspace(0.2, 2.0, cols)
    H = X.t() @ X
    st = InputStats(cols, hessian=True)
    st.H = H.clone()
    return torch.randn(rows, cols) * 0.1, H, st


@pytest.mark.parametrize("sym", [True, False])
def test_joint_unstructured_matches_reference(sym):
    w, H, st = _problem(1)
    sgpt = make_pruner("sparsegpt", quantize={"bits": 4, "group": 16, "sym": sym})
    new, keep = sgpt.prune(w, st, Unstructured(), 0.5)
    mask = first_block_mask(w, H, 0.5)
    assert torch.equal(~keep, mask)
    ref = obs_sweep(w, H, 4, 16, sym, mask)
    assert torch.allclose(new.double(), ref, atol=1e-5)
    assert (new[~keep] == 0).all()
    sgpt.pop_quant().codes(new)


def test_joint_group_pattern_matches_reference():
    w, H, st = _problem(2)
    sgpt = make_pruner("sparsegpt", quantize={"bits": 8, "group": 32})
    new, keep = sgpt.prune(w, st, Block(1, 8), 0.5)
    mask = first_block_mask(w, H, 0.5, g=8)
    assert torch.equal(~keep, mask)
    assert torch.allclose(new.double(), obs_sweep(w, H, 8, 32, True, mask), atol=1e-5)


def test_joint_nm_keeps_pattern_and_grid():
    w, H, st = _problem(3)
    sgpt = make_pruner("sparsegpt", quantize={"bits": 4, "group": 16})
    new, keep = sgpt.prune(w, st, NM(2, 4), 0.0)
    assert (keep.reshape(6, -1, 4).sum(-1) == 2).all()
    assert (new[~keep] == 0).all()
    sgpt.pop_quant().codes(new)


def test_without_quantize_nothing_changes():
    w, H, st = _problem(4)
    a, ka = make_pruner("sparsegpt").prune(w, st, Unstructured(), 0.5)
    assert torch.allclose(a.double(), obs_sweep(w, H, None, 1, True, first_block_mask(w, H, 0.5)), atol=1e-5)
    assert make_pruner("sparsegpt").pop_quant() is None


def test_block_pattern_must_be_one_row():
    w, H, st = _problem(5)
    with pytest.raises(SparsecraftError, match="use pattern 'block:1x4'"):
        make_pruner("sparsegpt").prune(w, st, Block(2, 4), 0.5)


def test_prune_quantize_end_to_end_on_tiny_llama():
    m = tiny_llama()
    rep = sparsecraft.prune(m, 0.5, method="sparsegpt", quantize={"bits": 4, "group": 16, "embedding": 8},
                            calib=calib_ids(), progress=False)
    assert rep.info["quantize"] == {"bits": 4, "group": 16, "sym": True, "embedding": 8}
    assert rep.info["quantized_embeddings"] == ["model.embed_tokens.weight", "lm_head.weight"]
    names = {n for n, *_ in quantized_params(m)}
    assert len(names) == 2 * 7 + 2
    q = m.model.layers[1].mlp.down_proj
    st = get_quant(q)
    codes = st.codes(q.weight.detach())
    assert (q.weight[~q.weight_mask] == 0).all() and codes.max() <= 15
    assert rep.sparsity >= 0.5  # exact mask + kept weights that quantize to 0


def test_quantize_errors_name_the_layer_before_any_work():
    m = tiny_llama()
    q_proj = r"layer 'model.layers.0.self_attn.q_proj.weight': quantization group 64"
    with pytest.raises(SparsecraftError, match=q_proj):
        sparsecraft.prune(m, 0.5, method="sparsegpt", quantize={"group": 64}, calib=calib_ids(), progress=False)
    assert not hasattr(m.model.layers[0].self_attn.q_proj, "weight_mask")  # nothing was touched
    with pytest.raises(SparsecraftError, match="quantization needs float32"):
        sparsecraft.prune(tiny_llama().to(torch.bfloat16), 0.5, method="sparsegpt", quantize={"group": 16},
                          calib=calib_ids(), progress=False)
    with pytest.raises(SparsecraftError, match="options belong to a method"):
        sparsecraft.prune(m, 0.5, criterion="wanda", quantize={"group": 16}, calib=calib_ids(), progress=False)
