"""Sparse model soups: uniform/greedy merging, shared masks kept, BatchNorm recalibration."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.methods import attach
from sparsecraft.methods.soups import average_state, make_soup, recalibrate_batchnorm, sparse_model_soups


def bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_average_state_is_the_mean():
    a, b = bn_model(0), bn_model(1)
    avg = average_state([a, b])
    assert torch.allclose(avg["0.weight"], (a[0].weight + b[0].weight) / 2)


def test_greedy_soup_skips_a_harmful_ingredient():
    good1, good2, bad = bn_model(0), bn_model(0), bn_model(0)
    with torch.no_grad():
        good2[3].bias.add_(0.01)
        bad[3].weight.mul_(-50)
    scores = {id(good1): 1.0, id(good2): 0.9, id(bad): 0.5}

    def validate(m):  # soups are scored by distance to good1's last layer
        if id(m) in scores:
            return scores[id(m)]
        return -float((m[3].weight - good1[3].weight).abs().sum().detach())

    soup, info = make_soup([good1, bad, good2], "greedy", validate)
    assert info["chosen"][0] == 0 and 1 not in info["chosen"]
    with pytest.raises(SparsecraftError):
        make_soup([good1], "greedy")


def test_bn_recalibration_is_exact_mean():
    m = bn_model()
    xs = [torch.randn(16, 6) for _ in range(3)]
    recalibrate_batchnorm(m, xs)
    h = torch.cat([m[0](x) for x in xs]).detach()
    assert torch.allclose(m[1].running_mean, h.mean(0), atol=1e-5)
    assert m[1].momentum == 0.1


def test_sparse_model_soups_keeps_masks_and_sparsity():
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    model = bn_model()

    def train_fn(model, phase, seed, weight_decay):
        torch.manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=weight_decay)
        attach(model, opt, method="static", from_model=True, total_steps=5)
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x[torch.randperm(64)[:16]]), y[:16]).backward()
            opt.step()

    def acc(m):
        m.eval()
        out = float((m(x).argmax(1) == y).float().mean())
        m.train()
        return out

    ingredients = [
        {"seed": 0, "weight_decay": 0.0},
        {"seed": 1, "weight_decay": 1e-3},
        {"seed": 2, "weight_decay": 0.0},
    ]
    soup, hist = sparse_model_soups(model, train_fn, sparsity=0.75, phases=2, ingredients=ingredients,
                                    mode="uniform", validate=acc, bn_batches=[x[:32], x[32:]])  # fmt: skip
    assert [h["sparsity"] for h in hist] == pytest.approx([0.5, 0.75])
    assert sparsecraft.report(soup).sparsity == pytest.approx(0.75, abs=0.01)
    assert hist[-1]["chosen"] == [0, 1, 2] and len(hist[-1]["ingredient_scores"]) == 3
