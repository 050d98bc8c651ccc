"""Each law evaluates its published formula and recovers known parameters from noiseless data."""

import numpy as np
import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling import LAWS, fit, make_law

NM = np.stack(np.meshgrid(np.geomspace(1e6, 1e9, 5), np.geomspace(1e8, 1e11, 5)), -1).reshape(-1, 2)
SND = np.array([(s, n, d) for s in (0, 0.5, 0.75, 0.875) for n in (1e6, 3e6, 1e7, 3e7) for d in (1e8, 1e9, 1e10)])

CASES = {
    "power": ({}, [0.5, 20.0, 0.4], np.geomspace(10, 1e5, 20)),
    "power-rising": ({}, [0.1, 0.05, -0.3], np.geomspace(0.01, 1, 15)),
    "chinchilla": ({}, [1.7, 400.0, 0.34, 410.0, 0.28], NM),
    "average-param": ({}, [1.2, 200.0, 0.3, 900.0, 0.35], NM),
    "bnsl0": ({"breaks": 0}, [0.3, 8.0, 0.25], np.geomspace(10, 1e5, 12)),
    "bnsl1": ({"breaks": 1}, [0.2, 5.0, 0.1, 0.8, 3000.0, 0.3], np.geomspace(10, 1e6, 25)),
    "sparse": ({}, [30.0, 0.8, 8.0, 0.25, 4e7, 0.3, 1.5], SND),
}


def _law_name(case: str) -> str:
    return {"power-rising": "power", "bnsl0": "bnsl", "bnsl1": "bnsl"}.get(case, case)


@pytest.mark.parametrize("case", sorted(CASES))
def test_recovers_known_parameters(case):
    opts, true, x = CASES[case]
    law = make_law(_law_name(case), **opts)
    y = law.predict(true, x)
    res = fit(law, x, y, loss="log")
    np.testing.assert_allclose(res.params, true, rtol=1e-4)
    assert res.rmsle_fit < 1e-6


def test_bnsl_two_breaks_recovered_in_canonical_order():
    law = make_law("bnsl", breaks=2)
    true = [0.1, 5.0, 0.05, 0.5, 300.0, 0.2, 0.6, 3e4, 0.3]
    x = np.geomspace(10, 1e6, 30)
    res = fit(law, x, law.predict(true, x))
    np.testing.assert_allclose(res.params, true, rtol=1e-3)
    swapped = np.array(true[:3] + true[6:] + true[3:6])
    np.testing.assert_allclose(law.canonical(swapped), true)


def test_bnsl_formula_by_hand():
    # y = a + b x^-c0 (1 + (x/d)^(1/f))^(-c1 f) at x = d: (1 + 1)^(-c1 f)
    law = make_law("bnsl", breaks=1)
    a, b, c0, c1, d, f = 0.5, 2.0, 0.5, 1.0, 100.0, 0.5
    y = law.predict([a, b, c0, c1, d, f], np.array([100.0]))
    assert y[0] == pytest.approx(0.5 + 2.0 * 100**-0.5 * 2**-0.5)


def test_sparse_law_formula_by_hand():
    law = make_law("sparse")
    # (a_S (1-S)^b_S + c_S) N^-b_N + (a_D/D)^b_D + c with S=0.75, N=16, D=100
    p = [2.0, 0.5, 1.0, 0.5, 400.0, 0.5, 0.25]
    y = law.predict(p, np.array([[0.75, 16.0, 100.0]]))
    assert y[0] == pytest.approx((2 * 0.5 + 1) * 0.25 + 2.0 + 0.25)


def test_chinchilla_formula_by_hand():
    y = make_law("chinchilla").predict([1.0, 4.0, 0.5, 9.0, 0.5], np.array([[4.0, 9.0]]))
    assert y[0] == pytest.approx(1 + 2 + 3)


def test_registry_and_bad_options():
    assert {"power", "chinchilla", "average-param", "bnsl", "sparse"} <= set(LAWS.names())
    with pytest.raises(SparsecraftError, match="unknown law"):
        make_law("nope")
    with pytest.raises(SparsecraftError, match="breaks"):
        make_law("bnsl", breaks=7)
    with pytest.raises(SparsecraftError, match="bad options"):
        make_law("power", breaks=1)


def test_input_domain_checks():
    with pytest.raises(SparsecraftError, match="0 <= S < 1"):
        make_law("sparse").validate_inputs(np.array([[1.0, 10.0, 10.0]]))
    with pytest.raises(SparsecraftError, match="x > 0"):
        make_law("power").validate_inputs(np.array([1.0, 0.0]))
    with pytest.raises(SparsecraftError, match="2 input columns"):
        make_law("chinchilla").check_x(np.ones(3))
