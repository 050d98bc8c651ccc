"""The clustered implicit-feedback generator (seeded, known structure), recall@k by hand, equal
parameter counts of sparse tables and the smaller dense baseline, and prune/grow actually moving."""

import numpy as np
import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.dsl_recommendation import (
    implicit_feedback,
    nonzero_parameters,
    recall_at_k,
    split_per_user,
    train_mf,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_generator_is_seeded():
    a, b = implicit_feedback(40, 30, 3, 0.5, 0.05, seed=1), implicit_feedback(40, 30, 3, 0.5, 0.05, seed=1)
    c = implicit_feedback(40, 30, 3, 0.5, 0.05, seed=2)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    assert np.array_equal(a.user_cluster, b.user_cluster)
    assert not np.array_equal(a.train + a.test, c.train + c.test)


def test_generator_has_the_cluster_structure():
    d = implicit_feedback(300, 200, 4, 0.4, 0.02, seed=0)
    full = d.train + d.test
    assert set(np.unique(full)) <= {0.0, 1.0} and not np.any(d.train * d.test)  # disjoint 0/1 split
    assert np.bincount(d.user_cluster).tolist() == [75] * 4 and np.bincount(d.item_cluster).tolist() == [50] * 4
    same = d.user_cluster[:, None] == d.item_cluster[None, :]
    assert abs(full[same].mean() - 0.4) < 0.02 and abs(full[~same].mean() - 0.02) < 0.005
    # p_out = 0: interactions only inside the cluster, i.e. the matrix is a permuted block diagonal
    e = implicit_feedback(30, 20, 5, 1.0, 0.0, seed=3)
    assert np.array_equal(e.train + e.test, (e.user_cluster[:, None] == e.item_cluster[None, :]).astype(np.float32))


def test_split_moves_a_fraction_of_each_row():
    m = np.array([[1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=np.float32)
    kept, held = split_per_user(m, 0.2, np.random.default_rng(0))
    assert held.sum(1).tolist() == [1, 0, 1] and np.array_equal(kept + held, m)


def test_recall_at_k_by_hand():
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    train = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=float)
    test = np.array([[0, 0, 1, 1], [1, 0, 0, 0]], dtype=float)
    # user 0: item 0 is a training item (excluded) -> top-2 = items 1, 2: 1 hit of min(2, 2) -> 0.5
    # user 1: top-2 = items 3, 2: 0 hits of min(2, 1) -> 0
    assert recall_at_k(scores, train, test, 2) == pytest.approx(0.25)
    # k = 3: user 0 finds both (1.0), user 1 still misses item 0 (rank 4) -> 0.5
    assert recall_at_k(scores, train, test, 3) == pytest.approx(0.5)
    assert recall_at_k(scores, train, test, 4) == pytest.approx(1.0)


def test_sparse_tables_store_as_many_parameters_as_the_smaller_dense_model():
    d = implicit_feedback(40, 24, 4, 0.5, 0.05, seed=0)
    sparse = train_mf(d, 8, sparsity=0.75, method="rigl", steps=30, every=5)
    dense = train_mf(d, 2, steps=30)
    assert nonzero_parameters(sparse) == (40 + 24) * 2 == sum(p.numel() for p in dense.parameters())
    for table in (sparse.users, sparse.items):  # uniform: every table at exactly 75%
        assert int((table.weight != 0).sum()) == table.weight.numel() // 4


def test_prune_grow_reallocates_and_beats_a_frozen_random_mask():
    torch.manual_seed(0)
    d = implicit_feedback(96, 64, 8, 0.6, 0.0, seed=0)
    static = train_mf(d, 16, sparsity=0.875, method="static", steps=150)
    dsl = train_mf(d, 16, sparsity=0.875, method="rigl", steps=150)
    s_mask, d_mask = static.users.weight != 0, dsl.users.weight != 0
    assert not torch.equal(s_mask, d_mask)
    r_static = recall_at_k(static().detach().numpy(), d.train, d.test, 5)
    r_dsl = recall_at_k(dsl().detach().numpy(), d.train, d.test, 5)
    assert r_dsl > r_static + 0.2


@pytest.mark.parametrize("spec, match", [({"sparsities": [0.3]}, "whole dense dimension"),
                                         ({"clusters": 0}, "clusters"), ({"weight_decays": []}, "weight_decays"),
                                         ({"k": 0}, "k must be")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "dsl-recommendation", **spec})


def test_generator_rejects_too_many_clusters():
    with pytest.raises(SparsecraftError, match="one user and one item per cluster"):
        implicit_feedback(3, 10, 4, 0.5, 0.1)
