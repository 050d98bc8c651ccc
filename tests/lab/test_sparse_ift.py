"""Sparse-IFT: k, the factorized width and doped rank by hand, iso-FLOP non-zero counts of every
transformation against the dense layer's, shapes, and a tiny end-to-end run."""

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.sparse_ift import (
    SparseDoped,
    SparseFactorized,
    SparseParallel,
    attach_static,
    build_mlp,
    doped_rank,
    factorized_width,
    iso_flop_k,
    nonzero_macs,
)


@pytest.mark.parametrize("s, k", [(0.0, 1), (0.5, 2), (0.75, 4), (0.8, 5), (0.9, 10), (0.6, 2), (0.7, 3)])
def test_k_is_round_of_one_over_density(s, k):
    assert iso_flop_k(s) == k


def test_factorized_width_and_doped_rank_by_hand():
    # 8x8 at s=0.5: d = ceil(64 / (0.5 * 16)) = 8; r = floor(0.5 * 64 / 16) = 2
    assert factorized_width(8, 8, 0.5) == 8 and doped_rank(8, 8, 0.5) == 2
    # 6 -> 3 at s=0.75: d = ceil(18 / (0.25 * 9)) = 8; r = floor(0.75 * 18 / 9) = 1
    assert factorized_width(6, 3, 0.75) == 8 and doped_rank(6, 3, 0.75) == 1
    # 10 -> 10 at s=0.9: d = ceil(100 / 2) = 50; r = floor(90 / 20) = 4
    assert factorized_width(10, 10, 0.9) == 50 and doped_rank(10, 10, 0.9) == 4


def _masked(widths, transform, s):
    model, sp = build_mlp(widths, transform, s)
    if sp:
        attach_static(model, sp, None)
    return model, sp


@pytest.mark.parametrize("transform, s, macs", [
    # dense 8-8-8-2: 64 + 64 + 16 = 144 MACs
    ("parallel", 0.5, 2 * 32 + 2 * 32 + 16),      # 2 branches of 32 kept weights per hidden layer
    ("parallel", 0.75, 4 * 16 + 4 * 16 + 16),
    ("factorized", 0.5, 0.5 * 128 + 0.5 * 128 + 16),  # d = 8: U and V 8x8 at 50%
    ("doped", 0.5, 32 + 2 * 16 + 32 + 2 * 16 + 16),  # 32 kept + rank 2 x (8 + 8) per layer
    ("wide", 0.75, 144),                           # widths 16: every layer keeps its dense count
])
def test_every_transformation_keeps_the_dense_macs(transform, s, macs):
    model, _ = _masked((8, 8, 8, 2), transform, s)
    assert nonzero_macs(model) == macs == 144


def test_counts_come_from_the_masks_not_from_zero_values():
    model, _ = _masked((8, 8, 8, 2), "parallel", 0.5)
    kept = sum(int(m.weight.count_nonzero()) for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert kept == 144  # random init has no exact zeros, so the masked weights are what is left
    dense, _ = build_mlp((8, 8, 8, 2))
    assert nonzero_macs(dense) == 144


def test_shapes_of_the_transformed_layers():
    wide, sp = build_mlp((8, 8, 8, 2), "wide", 0.75)  # k = 4: widths x 2
    assert [m.weight.shape for m in wide if isinstance(m, torch.nn.Linear)] == [(16, 8), (16, 16), (2, 16)]
    assert sp == {"0.weight": 0.5, "2.weight": 0.75, "4.weight": 0.5}
    par, _ = build_mlp((8, 8, 8, 2), "parallel", 0.9)
    assert isinstance(par[0], SparseParallel) and len(par[0].branches) == 10
    fac, _ = build_mlp((6, 3, 2), "factorized", 0.75)
    assert isinstance(fac[0], SparseFactorized) and fac[0].u.weight.shape == (8, 6) and fac[0].v.weight.shape == (3, 8)
    dop, sp = build_mlp((10, 10, 2), "doped", 0.9)
    assert isinstance(dop[0], SparseDoped) and dop[0].low_u.weight.shape == (4, 10)
    assert list(sp) == ["0.sparse.weight"]  # the low-rank path stays dense
    for model, f_in in ((wide, 8), (par, 8), (fac, 6), (dop, 10)):
        assert model(torch.randn(3, f_in)).shape == (3, 2)


def test_the_masks_hold_during_training_and_init_is_rescaled():
    torch.manual_seed(0)
    model, sp = build_mlp((8, 8, 8, 2), "parallel", 0.75)
    w0 = model[0].branches[0].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = attach_static(model, sp, opt, total_steps=3)
    kept = model[0].branches[0].weight_mask.clone()
    assert torch.allclose(model[0].branches[0].weight[kept], 2 * w0[kept])  # 1 / sqrt(0.25)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 8)).square().sum().backward()
        opt.step()
    method.finalize()
    assert (model[0].branches[0].weight[~kept] == 0).all() and nonzero_macs(model) == 144


@pytest.mark.parametrize("spec, match", [({"sparsities": [0.99]}, "sparsities entry"),
                                         ({"transforms": ["deep"]}, "unknown transform 'deep'"),
                                         ({"widths": [100, 10]}, "widths must start at 784")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "sparse-ift", **spec})
    with pytest.raises(SparsecraftError, match="unknown transform"):
        build_mlp((4, 4, 2), "tall", 0.5)


def test_tiny_run_reports_iso_flop_models(monkeypatch):
    import sparsecraft.lab.sparse_ift as mod

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 784, generator=g), torch.randint(0, 10, (256,), generator=g)
    monkeypatch.setattr(mod, "fashion_random", lambda n, nt, seed: (x, y, x[:64], y[:64]))
    res = EXPERIMENTS.build({"type": "sparse-ift", "sparsities": [0.75], "widths": [784, 16, 10],
                             "transforms": ["wide", "parallel"], "n_train": 256, "epochs": 1}).run()
    assert set(res.data["acc"]) == {("wide", 0.75), ("parallel", 0.75)}
    assert res.data["macs"][("parallel", 0.75)] == res.data["dense_macs"] == 784 * 16 + 160
    assert abs(res.data["macs"][("wide", 0.75)] - res.data["dense_macs"]) == 0
