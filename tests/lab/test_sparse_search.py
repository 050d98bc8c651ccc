"""Sparse architecture search: exact budgets of the allocations, random masks, the DASS-style
supernet's mixed forward by hand, the budget penalty steering the search, and bad knobs."""

import pytest
import torch
import torch.nn.functional as F

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.fashion import mlp
from sparsecraft.lab.sparse_search import (
    SparseSearchMLP,
    budget,
    dass_search,
    random_allocation,
    random_masks,
    scaled_allocation,
    topk_mask,
)


def test_random_allocations_meet_the_budget_and_are_uniform_on_the_simplex():
    sizes, K = [10_000, 10_000, 10_000], 6000
    shares = []
    for i in range(300):
        c = random_allocation(sizes, K, torch.Generator().manual_seed(i))
        assert sum(c) == K and all(0 <= k <= n for k, n in zip(c, sizes))
        shares.append([k / K for k in c])
    mean = torch.tensor(shares).mean(0)
    assert torch.allclose(mean, torch.full((3,), 1 / 3), atol=0.04)  # Dirichlet(1): mean share 1/3
    # P(share_1 < 0.1) = 1 - 0.9^2 = 0.19 under Dirichlet(1, 1, 1)
    assert 0.13 < sum(s[0] < 0.1 for s in shares) / 300 < 0.25
    small = random_allocation([5, 1000], 500, torch.Generator().manual_seed(0))
    assert small[0] <= 5 and sum(small) == 500


def test_scaled_allocation_by_hand():
    assert scaled_allocation([0.5, 0.25], [100, 100], 30) == [20, 10]
    assert scaled_allocation([1.0, 0.01], [10, 1000], 100) == [10, 90]  # the first layer is capped at dense
    assert budget([100, 100], 0.9) == 20 and budget([10, 10, 10], 0.999) == 3


def test_random_masks_have_exact_counts_and_zero_the_rest():
    model = mlp([6, 5, 3], seed=0)
    random_masks(model, [7, 15], torch.Generator().manual_seed(0))
    assert int((model[0].weight != 0).sum()) == 7 and int((model[2].weight != 0).sum()) == 15
    with pytest.raises(SparsecraftError, match="2 Linear layers"):
        random_masks(model, [1], torch.Generator())


def test_topk_mask_by_hand():
    w = torch.tensor([[3.0, -1.0], [2.0, 0.5]])
    assert topk_mask(w, 0.5).tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert topk_mask(w, 0.01).tolist() == [[1.0, 0.0], [0.0, 0.0]]  # at least one weight


def test_supernet_forward_and_expected_kept_by_hand():
    net = SparseSearchMLP([4, 2], [0.5, 1.0], seed=0)
    with torch.no_grad():
        net.alpha.copy_(torch.tensor([[0.0, torch.log(torch.tensor(3.0))]]))  # p = (1/4, 3/4)
        net.net[0].weight.copy_(torch.tensor([[4.0, -3.0, 2.0, 1.0], [0.1, 0.2, -0.3, 0.4]]))
        net.net[0].bias.zero_()
    w = net.net[0].weight.detach()
    top_half = torch.tensor([[4.0, -3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]])  # the 4 largest |w| of 8
    expected = 0.25 * top_half + 0.75 * w
    x = torch.randn(3, 4)
    assert torch.allclose(net(x), x @ expected.T, atol=1e-6)
    assert float(net.expected_kept().detach()) == pytest.approx((0.25 * 0.5 + 0.75 * 1.0) * 8)
    assert net.choice() == [1.0]


def test_budget_penalty_pulls_the_expected_size_to_the_budget():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    counts, net = dass_search([8, 16, 3], 0.9, (x, y), (x, y), epochs=20, lr=1e-3, alpha_lr=0.05, lam=100.0,
                              seed=0)
    K = budget([128, 48], 0.9)
    start = SparseSearchMLP([8, 16, 3], net.densities, seed=0).expected_kept()
    assert float(start.detach()) > 1.4 * K  # uniform mixing starts well above the budget
    assert abs(float(net.expected_kept().detach()) - K) / K < 0.15
    assert sum(counts) == K
    assert F.cross_entropy(net(x), y).isfinite()


def test_experiment_on_blobs():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(30)
    x = 3 * torch.eye(4, 10)[y] + 0.5 * torch.randn(len(y), 10, generator=gen)
    res = EXPERIMENTS.build({"type": "sparse-search", "sparsities": [0.5], "sizes": [10, 12, 4], "candidates": 3,
                             "train_per_class": 30, "val_per_class": 10, "epochs": 2, "search_epochs": 1,
                             "train_seeds": [0], "data": (x, y, x, y)}).run()
    e = res.data["results"][0]
    K = budget([120, 48], 0.5)
    for key in ("uniform", "erk", "random-search", "dass"):
        assert sum(e[key]["counts"]) == K
    assert e["random-search"]["proxy"] == max(c["proxy"] for c in e["candidates"])
    assert len(res.tables[0].rows) == 5 and "random-search pick" in res.finding


@pytest.mark.parametrize("spec, match", [({"candidates": 1}, "candidates"), ({"sizes": [784]}, "sizes"),
                                         ({"val_per_class": 600}, "val_per_class"), ({"sparsities": []}, "at least")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "sparse-search", **spec})
