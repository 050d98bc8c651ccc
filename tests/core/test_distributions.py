import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

import sparsecraft
from sparsecraft.distributions import erk_densities, exact_counts
from sparsecraft.errors import SparsecraftError
from tests.core.helpers import mlp, small_mlp


def test_erk_test_vector_from_algorithms_md():
    dens = erk_densities([(300, 784), (100, 300), (10, 100)], 0.10)
    assert dens[0] == pytest.approx(0.0796, abs=5e-5)
    assert dens[1] == pytest.approx(0.2302, abs=5e-5)
    assert dens[2] == 1.0
    sizes = [300 * 784, 100 * 300, 10 * 100]
    assert sum(d * n for d, n in zip(dens, sizes)) / sum(sizes) == pytest.approx(0.100, abs=1e-12)


def test_erk_prune_meets_total_exactly():
    model = mlp()
    rep = sparsecraft.prune(model, 0.9, distribution="erk")
    assert rep.nonzeros == 26620  # exactly 10% of 266,200 prunable weights
    assert rep.layer("4.weight").sparsity == 0.0


def test_er_uses_only_out_and_in_for_convs():
    d_er = erk_densities([(16, 8, 3, 3), (32, 16, 3, 3)], 0.2, kernel=False)
    raw = [(16 + 8) / (16 * 8), (32 + 16) / (32 * 16)]
    assert d_er[0] / d_er[1] == pytest.approx(raw[0] / raw[1])


@given(st.lists(st.integers(1, 500), min_size=1, max_size=6), st.floats(0, 1))
@example(sizes=[1], density=0.9999999999999999)  # found in CI: floor(0.99..*1) = 0 but the ideal count rounds to 1
def test_exact_counts_sum_to_the_total(sizes, density):
    total = math.floor(density * sum(sizes))
    counts = exact_counts([density] * len(sizes), sizes, total)
    assert sum(counts) == total
    assert all(0 <= c <= n for c, n in zip(counts, sizes))


@given(st.lists(st.tuples(st.integers(0, 300), st.floats(-0.5, 1.5)), min_size=1, max_size=6),
       st.integers(0, 10**6))
@example(pairs=[(10, 1.0), (10, 1.0)], draw=15)  # every layer asks for all: 5 must come back out
@example(pairs=[(4, 2.0), (10, 0.0)], draw=7)  # a density above 1: the rest goes to the other layer
def test_exact_counts_meet_any_possible_total(pairs, draw):
    """Densities that do not add up to the total (or leave [0, 1]) are clipped, then the
    difference is spread over the layers that still have room: any total in [0, sum] is met."""
    sizes = [n for n, _ in pairs]
    total = draw % (sum(sizes) + 1)
    counts = exact_counts([d for _, d in pairs], sizes, total)
    assert sum(counts) == total
    assert all(0 <= c <= n for c, n in zip(counts, sizes))


def test_exact_counts_largest_remainder_by_hand():
    # ideal 2.5, 3.7, 1.8 (sum 8.0); floors 2, 3, 1 = 6; the two largest remainders (0.8, 0.7) get +1
    assert exact_counts([0.25, 0.37, 0.18], [10, 10, 10], 8) == [2, 4, 2]
    # too many: ideal 6, 6 (floors 12) for a total of 11: one comes off a layer (the first on a tie)
    assert exact_counts([0.6, 0.6], [10, 10], 11) == [5, 6]
    # a density above 1 is clipped to the layer size; the rest of the total goes elsewhere
    assert exact_counts([2.0, 0.0], [4, 10], 7) == [4, 3]


@pytest.mark.parametrize("total", [-1, 31])
def test_exact_counts_impossible_total_is_a_clear_error(total):
    with pytest.raises(SparsecraftError, match=r"total_keep .* must be in \[0, 30\]"):
        exact_counts([0.5, 0.5, 0.5], [10, 10, 10], total)


def test_exact_counts_rejects_mismatched_or_nan_input():
    with pytest.raises(SparsecraftError, match="one density per size"):
        exact_counts([0.5], [10, 10], 5)
    with pytest.raises(SparsecraftError, match="finite"):
        exact_counts([float("nan")], [10], 5)


@given(st.floats(0, 1))
def test_global_prunes_exact_total(s):
    model = small_mlp()
    rep = sparsecraft.prune(model, s, distribution="global")
    n = rep.numel
    assert n - rep.nonzeros == math.floor(s * n + 1e-6)


def test_global_is_one_ranking_across_layers():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(2.0)
    rep = sparsecraft.prune(model, 0.5, distribution="global")
    assert rep.layer("0.weight").sparsity == 1.0
    assert rep.layer("1.weight").sparsity == 0.0


def test_ignored_layers_total_is_met_over_the_prunable_rest():
    model = small_mlp()
    rep = sparsecraft.prune(model, 0.75, distribution="erk", ignore=["^4$"])
    masked = [l for l in rep.layers if l.pattern != "dense"]
    assert [l.name for l in masked] == ["0.weight", "2.weight"]
    numel = sum(l.numel for l in masked)
    assert sum(l.nonzeros for l in masked) == numel - math.floor(0.75 * numel)
    assert rep.layer("4.weight").sparsity == 0.0


def test_biases_are_never_pruned():
    model = small_mlp()
    sparsecraft.prune(model, 0.9)
    assert all(torch.count_nonzero(m.bias) == m.bias.numel() for m in model if isinstance(m, nn.Linear))


def test_explicit_map_and_overrides():
    model = small_mlp()
    rep = sparsecraft.prune(
        model,
        0.5,
        distribution={"type": "explicit", "sparsities": {r"^0\.": 0.25}},
        overrides=[{"match": r"^4\.", "sparsity": 0.0}],
    )
    assert rep.layer("0.weight").sparsity == 0.25
    assert rep.layer("2.weight").sparsity == 0.5
    assert rep.layer("4.weight").sparsity == 0.0


def test_unknown_distribution_lists_allowed():
    with pytest.raises(SparsecraftError, match="allowed: er, erk, explicit, global, owl, uniform"):
        sparsecraft.prune(small_mlp(), 0.5, distribution="zipf")
