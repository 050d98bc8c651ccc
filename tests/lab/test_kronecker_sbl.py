"""SBL E-step against the explicit posterior, the Kronecker M-steps against a generic optimiser and
a hand-written power iteration, and recovery on small known problems."""

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.kronecker_sbl import e_step, kron_cost, kronecker_problem, m_step_am, m_step_svd, nmse_db, sbl


def test_e_step_equals_the_explicit_gaussian_posterior():
    rng = np.random.default_rng(0)
    Phi, y = rng.standard_normal((5, 8)), rng.standard_normal(5)
    gamma, sigma2 = rng.random(8) + 0.1, 0.3
    Sigma = np.linalg.inv(Phi.T @ Phi / sigma2 + np.diag(1 / gamma))
    mu, var = e_step(Phi, y, gamma, sigma2)
    assert np.allclose(mu, Sigma @ Phi.T @ y / sigma2) and np.allclose(var, np.diag(Sigma))


def test_am_m_step_reaches_the_minimum_of_the_kronecker_cost():
    rng = np.random.default_rng(1)
    Q = rng.random((3, 4)) ** 2 + 0.01

    def cost(logs):  # the same objective, written out over log-parameters
        g1, g2 = np.exp(logs[:3]), np.exp(logs[3:])
        return sum(Q[i, j] / (g1[i] * g2[j]) + math.log(g1[i] * g2[j]) for i in range(3) for j in range(4))

    ref = minimize(cost, np.zeros(7), method="BFGS", options={"gtol": 1e-10})
    g1, g2 = m_step_am(Q, np.ones(4), sweeps=500)
    assert kron_cost(Q, g1, g2) == pytest.approx(ref.fun, abs=1e-6)
    assert np.allclose(np.outer(g1, g2), np.outer(np.exp(ref.x[:3]), np.exp(ref.x[3:])), rtol=1e-3)
    # one sweep never increases the cost (each update is an exact block minimiser)
    h1, h2 = m_step_am(Q, np.ones(4), sweeps=1)
    assert kron_cost(Q, h1, h2) <= kron_cost(Q, np.ones(3), np.ones(4))


def test_m_steps_are_exact_on_a_rank_one_q():
    a, b = np.array([0.5, 2.0, 0.1]), np.array([1.0, 3.0])
    Q = np.outer(a, b)
    for g1, g2 in (m_step_svd(Q), m_step_am(Q, np.ones(2), sweeps=3)):
        assert np.allclose(np.outer(g1, g2), Q)


def test_svd_m_step_is_the_top_singular_triple():
    Q = np.random.default_rng(2).random((5, 4))
    v = np.ones(4)
    for _ in range(500):  # power iteration on Q^T Q
        v = Q.T @ (Q @ v)
        v /= np.linalg.norm(v)
    u = Q @ v
    g1, g2 = m_step_svd(Q)
    assert np.allclose(np.outer(g1, g2), np.outer(u, v))


@pytest.mark.parametrize("variant", ["sbl", "krosbl-am", "krosbl-svd"])
def test_recovery_of_a_small_kronecker_supported_signal(variant):
    rng = np.random.default_rng(3)
    A1, A2, x, y, s2 = kronecker_problem(rng, 6, 8, 6, 8, 2, 2, snr_db=40)
    xh, it = sbl(A1, A2, y, s2, variant, iters=300)
    assert nmse_db(xh, x) < -25
    # the three clearly non-zero entries (the fourth drawn value is -0.004) are the three largest found
    big = set(np.flatnonzero(np.abs(x) > 0.1))
    assert len(big) == 3 and set(np.argsort(-np.abs(xh))[:3]) == big


def test_kronecker_prior_beats_plain_sbl_at_low_snr():
    # 36 measurements of a 9-sparse signal in 144 unknowns: hard for plain SBL, the 3 x 3 support helps
    res = EXPERIMENTS.build({"type": "kronecker-sbl", "m1": 6, "n1": 12, "m2": 6, "n2": 12, "s1": 3, "s2": 3,
                             "snrs": [10, 20], "trials": 4, "iters": 60}).run()
    nm = res.data["nmse"]
    assert all(k < s - 1 for k, s in zip(nm["krosbl-svd"], nm["sbl"]))
    assert all(k < s - 1 for k, s in zip(nm["krosbl-am"], nm["sbl"]))


def test_bad_inputs_are_one_line_errors():
    A = np.eye(2)
    with pytest.raises(SparsecraftError, match="unknown SBL variant"):
        sbl(A, A, np.ones(4), 0.1, "krosbl")
    with pytest.raises(SparsecraftError, match="sigma2 must be > 0"):
        sbl(A, A, np.ones(4), 0.0)
    with pytest.raises(SparsecraftError, match="s1 must be"):
        EXPERIMENTS.build({"type": "kronecker-sbl", "n1": 4, "s1": 5})
