"""Proximal maps of the l1 / lq / l0 / CEL0 penalties (checked against brute-force minimisation on
a fine grid), ISTA on an orthogonal dictionary (closed-form minimisers) and the experiment's claim."""

import math

import numpy as np
import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.sparse_coding import (
    ista,
    lam_for_threshold,
    lq_threshold,
    prox_cel0,
    prox_l0,
    prox_l1,
    prox_lq,
)

GRID = np.linspace(-5, 5, 1_000_001)


def brute_prox(z: float, penalty) -> float:
    """argmin over a 1e-5 grid of 0.5 (x - z)^2 + penalty(x)."""
    return float(GRID[np.argmin(0.5 * (GRID - z) ** 2 + penalty(GRID))])


def test_soft_and_hard_thresholds_by_hand():
    z = np.array([-2.0, -0.5, 0.3, 1.5])
    assert np.allclose(prox_l1(z, 1.0), [-1.0, 0.0, 0.0, 0.5])
    # hard threshold at sqrt(2 * 1) = 1.414
    assert np.allclose(prox_l0(z, 1.0), [-2.0, 0.0, 0.0, 1.5])


def test_half_threshold_matches_xu_formula():
    # Xu et al. 2012: min (x-z)^2 + lam |x|^(1/2) is zero below 54^(1/3)/4 lam^(2/3); here lam = 2 t
    t = 0.7
    assert lq_threshold(t, 0.5) == pytest.approx(54 ** (1 / 3) / 4 * (2 * t) ** (2 / 3))


@pytest.mark.parametrize("q", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("t", [0.5, 1.2])
def test_lq_prox_is_the_brute_force_minimiser(q, t):
    thr = lq_threshold(t, q)
    zs = [z for z in np.linspace(-3.7, 3.9, 23) if abs(abs(z) - thr) > 0.02]
    got = prox_lq(np.array(zs), t, q)
    want = [brute_prox(z, lambda x: t * np.abs(x) ** q) for z in zs]
    assert np.allclose(got, want, atol=3e-5)
    assert np.any(got == 0) and np.any(got != 0)


@pytest.mark.parametrize("a", [1.0, 0.8])
def test_cel0_prox_is_the_brute_force_minimiser(a):
    lam, step = 0.6, 0.9

    def cel0(x):  # written out from Soubies et al. 2015, eq. (5)
        knee = math.sqrt(2 * lam) / a
        return np.where(np.abs(x) <= knee, lam - a * a / 2 * (np.abs(x) - knee) ** 2, lam)

    zs = np.linspace(-3.1, 2.9, 31)
    got = prox_cel0(zs, lam, step, a)
    want = [brute_prox(z, lambda x: step * cel0(x)) for z in zs]
    assert np.allclose(got, want, atol=3e-5)


def test_cel0_prox_refuses_a_step_too_long():
    with pytest.raises(SparsecraftError, match="a_i\\^2 \\* step < 1"):
        prox_cel0(np.ones(3), 0.5, 1.0, 1.0)


@pytest.mark.parametrize("penalty", ["l1", "lq", "l0", "cel0"])
def test_threshold_parametrisation(penalty):
    from sparsecraft.lab.sparse_coding import prox

    thr, step = 0.8, 0.5
    lam = lam_for_threshold(penalty, thr, step)
    out = prox(penalty, np.array([thr * 0.99, thr * 1.01, -thr * 1.01]), lam, step)
    assert out[0] == 0 and out[1] > 0 and out[2] < 0


def test_ista_on_an_orthogonal_dictionary_reaches_the_closed_form_codes():
    # A = Q orthogonal: 0.5||Qx - y||^2 + g(x) = 0.5||x - b||^2 + g(x) + const with b = Q^T y
    q_mat, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((6, 6)))
    b = np.array([2.0, -0.4, 1.5, 0.2, -3.0, 0.6])
    y = q_mat @ b
    lam, step = 0.5, 0.99
    l1 = ista(q_mat, y, "l1", [step * lam], iters=60, step=step)[0]
    assert np.allclose(l1, [1.5, 0.0, 1.0, 0.0, -2.5, 0.1], atol=1e-8)
    # l0 and its exact relaxation CEL0: keep b where |b| > sqrt(2 lam) = 1
    l0 = ista(q_mat, y, "l0", [math.sqrt(2 * step * lam)], iters=60, step=step)[0]
    cel0 = ista(q_mat, y, "cel0", [math.sqrt(2 * lam) * step], iters=60, step=step)[0]
    assert np.allclose(l0, [2.0, 0, 1.5, 0, -3.0, 0], atol=1e-8)
    assert np.allclose(cel0, [2.0, 0, 1.5, 0, -3.0, 0], atol=1e-8)
    # l1/2 with t = lam: zero below 1.5 * 0.5^(2/3) = 0.945, else the root of x + x^(-1/2)/4 = |b|
    lq = ista(q_mat, y, "lq", [lq_threshold(step * lam, 0.5)], iters=60, step=step)[0]
    want = [brute_prox(v, lambda x: lam * np.abs(x) ** 0.5) for v in b]
    assert np.allclose(lq, want, atol=3e-5)
    assert lq[1] == lq[3] == lq[5] == 0


def test_non_convex_thresholds_recover_denser_codes_than_l1():
    res = EXPERIMENTS.build({"type": "sparse-coding", "m": 20, "n": 40, "ks": [7, 9], "trials": 8,
                             "stages": 8, "iters": 120, "seed": 1}).run()
    s = res.data["success"]
    assert sum(s["cel0"]) > sum(s["l1"]) and sum(s["lq"]) > sum(s["l1"])
    nnz = res.data["nnz"]
    assert np.mean(nnz["l1"]) > np.mean(nnz["cel0"])
    assert "| k | k/m | l1 | l0.5 | l0 | cel0 |" in res.to_markdown()


@pytest.mark.parametrize("spec, match", [({"q": 1.0}, "q must be < 1"), ({"q": 0}, "q must be"),
                                         ({"m": 10, "ks": [10]}, "ks entry"), ({"trials": 0}, "trials")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "sparse-coding", **spec})
