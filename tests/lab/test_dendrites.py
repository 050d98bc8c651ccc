"""SDR match probabilities against hand values and brute-force enumeration of every pattern, the
simulator against the closed forms, and the experiment's threshold optimum."""

from itertools import combinations

import numpy as np
import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.dendrites import (
    false_match_probability,
    false_miss_probability,
    random_sdrs,
    simulate_false_match,
    simulate_false_miss,
)


def test_false_match_by_hand():
    # n=10, a=3, s=2: both synapses active in C(8,1)=8 of C(10,3)=120 patterns
    assert false_match_probability(10, 3, 2, 2) == pytest.approx(8 / 120)
    # at least one: 1 - C(8,3)/C(10,3) = 1 - 56/120
    assert false_match_probability(10, 3, 2, 1) == pytest.approx(64 / 120)
    assert false_match_probability(10, 3, 2, 0) == 1.0


@pytest.mark.parametrize("n, a, s, theta", [(9, 3, 3, 2), (10, 4, 3, 1), (8, 4, 5, 3)])
def test_false_match_equals_enumeration_of_all_patterns(n, a, s, theta):
    segment = set(range(s))
    pats = list(combinations(range(n), a))
    hits = sum(len(segment & set(p)) >= theta for p in pats)
    assert false_match_probability(n, a, s, theta) == pytest.approx(hits / len(pats))


@pytest.mark.parametrize("a, s, theta, v", [(6, 3, 2, 2), (7, 4, 3, 3), (5, 5, 4, 1), (6, 2, 1, 6)])
def test_false_miss_equals_enumeration_of_all_noisy_copies(a, s, theta, v):
    # the segment holds s of the pattern's a cells; the noisy copy keeps a - v of them
    segment = set(range(s))
    kept = list(combinations(range(a), a - v))
    misses = sum(len(segment & set(k)) < theta for k in kept)
    assert false_miss_probability(a, s, theta, v) == pytest.approx(misses / len(kept))


def test_random_sdrs_have_exactly_a_active_cells():
    x = random_sdrs(np.random.default_rng(0), 50, 40, 7)
    assert x.shape == (50, 40) and (x.sum(axis=1) == 7).all()
    assert x.any(axis=0).all()  # not always the same cells


def test_simulator_matches_the_closed_forms():
    rng = np.random.default_rng(0)
    p = false_match_probability(200, 20, 12, 3)
    sim, cells = simulate_false_match(rng, 200, 20, 12, 3, 20_000)
    assert cells == 12 and abs(sim - p) < 4 * np.sqrt(p * (1 - p) / 20_000)
    q = false_miss_probability(20, 12, 8, 8)
    sim = simulate_false_miss(rng, 200, 20, 12, 8, 8, 1500)
    assert abs(sim - q) < 4 * np.sqrt(q * (1 - q) / 1500)


def test_the_summed_error_has_an_interior_optimum():
    res = EXPERIMENTS.build({"type": "dendrites", "ns": [128, 256], "a": 24, "s": 12, "theta": 5,
                             "thetas": [2, 4, 6, 8, 10], "unions": [1, 3], "union_n": 512,
                             "trials": 4000, "miss_trials": 200}).run()
    by_theta = res.data["by_theta"]
    fp = [r[1] for r in by_theta]
    fn = [r[2] for r in by_theta]
    assert fp == sorted(fp, reverse=True) and fn == sorted(fn)
    assert res.data["best_theta"] not in (2, 10)
    assert res.data["by_n"][1][1] < res.data["by_n"][0][1]
    assert res.data["by_union"][1][1] > res.data["by_union"][0][1]


@pytest.mark.parametrize("spec, match", [({"a": 10, "ns": [8]}, "every n must be >= a"),
                                         ({"s": 100}, "s must be"), ({"noise": 2}, "noise")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "dendrites", **spec})
