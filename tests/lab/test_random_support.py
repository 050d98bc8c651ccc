"""OMP and the Lasso on hand-checkable orthogonal designs, the peeling preconditioner's invariants,
recovery where the plain Lasso fails, the success-probability count, and one-line errors."""

import math

import numpy as np
import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.random_support import (
    find_preconditioner,
    lasso,
    make_design,
    make_signal,
    omp,
    pair_signal,
    preconditioned_lasso,
    prediction_error,
    refit,
    success_probability,
)

H4 = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=float)  # orthogonal, norm 2


def test_omp_recovers_a_two_sparse_signal_on_an_orthogonal_design_in_two_steps():
    # y = 3 h1 - h3: correlations |H^T y| / ||h|| = (0, 6, 0, 2), so step 1 takes column 1; the
    # least-squares refit leaves the residual -h3, so step 2 takes column 3 and the residual is 0.
    y = 3 * H4[:, 1] - H4[:, 3]
    w, chosen = omp(H4, y, 2)
    assert chosen == [1, 3]
    assert np.allclose(w, [0, 3, 0, -1])
    w1, chosen1 = omp(H4, y, 1)
    assert chosen1 == [1] and np.allclose(w1, [0, 3, 0, 0])


def test_omp_refits_all_chosen_columns_on_a_correlated_design():
    # columns a = e1, b = (e1 + e2)/sqrt(2); y = (2, 1). Step 1: |X^T y| = (2, 3/sqrt(2)) takes b;
    # the refit leaves r = y - (3/2)(1, 1) = (0.5, -0.5), step 2 takes a, and least squares on {b, a}
    # gives y = 1 a + sqrt(2) b exactly (plain matching pursuit would stop at a = 0.5, b = 2.12).
    X = np.array([[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]])
    w, chosen = omp(X, np.array([2.0, 1.0]), 2)
    assert chosen == [1, 0] and np.allclose(w, [1.0, math.sqrt(2)])


def test_lasso_is_the_soft_threshold_on_an_orthonormal_design():
    # F^T F / N = I with F = sqrt(3) I: the minimiser of (1/2N)||y - F t||^2 + lam ||t||_1 is the
    # soft threshold of z = F^T y / N = (2, -0.3, 0.5) at lam = 0.4: (1.6, 0, 0.1).
    F = math.sqrt(3) * np.eye(3)
    y = math.sqrt(3) * np.array([2.0, -0.3, 0.5])
    assert np.allclose(lasso(F, y, 0.4), [1.6, 0.0, 0.1], atol=1e-9)
    # F^T F / N = 4 I: theta = soft(z, lam) / 4 with z = (8, -1.2, 2), lam = 1.6: the same (1.6, 0, 0.1)
    assert np.allclose(lasso(2 * F, 2 * y, 1.6), [1.6, 0.0, 0.1], atol=1e-9)
    # a rotated orthonormal design with more rows than features: the same closed form
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((8, 5)))
    F = math.sqrt(8) * Q
    y = rng.standard_normal(8)
    z = F.T @ y / 8
    expected = np.where(np.abs(z) > 0.3, z - 0.3 * np.sign(z), 0.0)
    assert np.allclose(lasso(F, y, 0.3), expected, atol=1e-9)


def test_refit_is_least_squares_on_the_kept_features():
    F = math.sqrt(3) * np.eye(3)
    y = math.sqrt(3) * np.array([2.0, -0.3, 0.5])
    assert np.allclose(refit(F, y, np.array([1.6, 0.0, 0.1])), [2.0, 0.0, 0.5])
    assert np.allclose(refit(F, y, np.zeros(3)), 0.0)


def test_prediction_error_and_success_probability_by_hand():
    X = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert prediction_error(X, np.array([1.0, 1.0]), np.array([0.0, 1.0])) == pytest.approx(0.5)
    assert prediction_error(X, np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(2.0)
    assert success_probability([0.05, 0.2, 0.1, 0.01], 0.1) == 0.75  # <= eps counts
    assert success_probability([0.5, 0.2], 0.1) == 0.0


def test_a_gaussian_design_needs_no_preconditioning():
    X = np.random.default_rng(1).standard_normal((50, 120))
    T, r = find_preconditioner(X)
    assert r == 0
    assert np.allclose(T, np.diag(math.sqrt(50) / np.linalg.norm(X, axis=0)))


def test_peeling_finds_a_planted_shared_direction_and_keeps_its_invariants():
    rng = np.random.default_rng(2)
    n, d = 40, 80
    z = rng.standard_normal(n)
    X = np.outer(z, np.ones(d)) + 0.01 * rng.standard_normal((n, d))  # every column ~ z
    T, r = find_preconditioner(X)
    assert r >= 1
    F = X @ T
    assert np.allclose(np.linalg.norm(F, axis=0) / math.sqrt(n), 1.0)  # unit-RMS features
    first = F[:, 0] / np.linalg.norm(F[:, 0])
    assert abs(first @ z) / np.linalg.norm(z) > 0.99  # the peeled direction is the planted one
    U = F[:, :r] / math.sqrt(n)
    assert np.allclose(U.T @ U, np.eye(r), atol=1e-8)  # peeled directions are orthonormal
    assert np.allclose(U.T @ F[:, r:], 0.0, atol=1e-8)  # and projected out of every residual column


def test_preconditioned_lasso_recovers_a_noiseless_factor_instance_where_omp_fails():
    rng = np.random.default_rng(3)
    X, B = make_design("factor", 60, 100, rng)
    w = make_signal(X, 5, rng, B)
    y = X @ w
    wp, r = preconditioned_lasso(X, y, sigma=1e-3)
    assert r >= 2 and prediction_error(X, w, wp) < 1e-12
    assert np.allclose(wp, w, atol=1e-8)  # w* itself, though N = 60 < d = 100
    assert prediction_error(X, w, omp(X, y, 5)[0]) > 0.1


def test_signals_cancel_the_factors_and_have_unit_prediction_norm():
    rng = np.random.default_rng(4)
    X, B = make_design("factor", 30, 50, rng)
    w = make_signal(X, 6, rng, B)
    assert np.count_nonzero(w) == 6
    assert np.allclose(B @ w, 0.0, atol=1e-9)
    assert np.sum((X @ w) ** 2) / 30 == pytest.approx(1.0)


def test_pairs_design_and_its_adversarial_support():
    rng = np.random.default_rng(5)
    X, B = make_design("pairs", 20, 9, rng)
    assert B is None and np.allclose(X[:, 1:8:2] - X[:, 0:8:2], 0.0, atol=0.5)  # near-duplicates
    assert not np.allclose(X[:, 1:8:2], X[:, 0:8:2])
    w = pair_signal(X, 5, rng)
    nz = np.flatnonzero(w)
    assert nz.size == 4 and np.array_equal(nz[0::2] + 1, nz[1::2]) and np.all(nz[0::2] % 2 == 0)
    assert np.allclose(w[nz[0::2]], -w[nz[1::2]])  # each pair cancels its shared part
    assert np.sum((X @ w) ** 2) / 20 == pytest.approx(1.0)
    assert np.abs(w).sum() > 5  # ~ 1/delta: a large l1 norm for a unit prediction norm


def test_small_experiment_separates_the_methods_on_the_factor_design():
    res = EXPERIMENTS.build({"type": "random-support", "d": 60, "k": 4, "ns": [40], "trials": 3,
                             "families": ["factor"], "sigma": 0.3}).run()
    err = res.data["errors"]["factor"]
    assert max(err["precond-lasso"][0]) < 0.1
    assert min(err["lasso"][0]) > 0.5 and min(err["omp"][0]) > 0.15  # the signal is 1: Lasso fits ~nothing
    assert "factor" in res.to_markdown()


@pytest.mark.parametrize("call, match", [
    (lambda: make_signal(np.ones((4, 3)), 5, np.random.default_rng(0)), r"k must be an integer in \[1, d\]"),
    (lambda: omp(np.ones((4, 3)), np.ones(4), 4), r"k must be an integer in \[1, min\(N, d\)\]"),
    (lambda: make_design("gaussian", 0, 3, np.random.default_rng(0)), "N must be an integer >= 1"),
    (lambda: omp(np.ones((4, 3)), np.ones(5), 1), r"y must have shape \(4,\) to match X"),
    (lambda: lasso(np.ones((4, 3)), np.ones(3), 0.1), r"y must have shape \(4,\)"),
    (lambda: prediction_error(np.ones((4, 3)), np.ones(3), np.ones(2)), r"must have shape \(3,\)"),
    (lambda: make_design("nope", 4, 3, np.random.default_rng(0)), "unknown design family 'nope'; allowed"),
    (lambda: EXPERIMENTS.build({"type": "random-support", "ns": [0]}), "ns entry must be an integer >= 1"),
    (lambda: EXPERIMENTS.build({"type": "random-support", "d": 10, "k": 11}), r"k must be an integer in \[3, 10\]"),
    (lambda: success_probability([], 0.1), "errors must be a non-empty"),
    (lambda: pair_signal(np.ones((4, 6)), 1, np.random.default_rng(0)), r"k must be an integer in \[2, 6\] for 3"),
])
def test_bad_inputs_are_one_line_errors(call, match):
    with pytest.raises(SparsecraftError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
