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


# Values worked out with pencil from each paper's formula (never from the library's predict), so a
# wrong sign, a swapped parameter or a misplaced exponent in predict fails here even though the
# recovery test above (data made and fitted by the same predict) would still pass.
BY_HAND = [
    # power: y = E + A x^-alpha
    # E=0.5, A=8, alpha=1.5: x=1 -> 0.5 + 8 = 8.5; x=4 -> 4^-1.5 = 1/8, 0.5 + 1 = 1.5; x=16 -> 16^-1.5 = 1/64,
    # 0.5 + 8/64 = 0.625
    ("power", {}, [0.5, 8.0, 1.5], [1.0, 4.0, 16.0], [8.5, 1.5, 0.625]),
    # rising (alpha < 0): E=0, A=3, alpha=-0.5: x=4 -> 3 * 2 = 6; x=9 -> 3 * 3 = 9
    ("power", {}, [0.0, 3.0, -0.5], [4.0, 9.0], [6.0, 9.0]),
    # chinchilla: L = E + A/N^alpha + B/D^beta
    # [1, 4, 0.5, 9, 0.5] at N=4, D=9: 1 + 4/2 + 9/3 = 6
    # [0.5, 200, 2, 30, 0.5] at N=10, D=100: 0.5 + 200/100 + 30/10 = 5.5
    ("chinchilla", {}, [1.0, 4.0, 0.5, 9.0, 0.5], [[4.0, 9.0]], [6.0]),
    ("chinchilla", {}, [0.5, 200.0, 2.0, 30.0, 0.5], [[10.0, 100.0]], [5.5]),
    # average-param (same form, N -> Nbar): [1.25, 200, 0.5, 900, 0.5] at Nbar=400, D=8100:
    # 1.25 + 200/20 + 900/90 = 21.25
    ("average-param", {}, [1.25, 200.0, 0.5, 900.0, 0.5], [[400.0, 8100.0]], [21.25]),
    # bnsl, no break: y = a + b x^-c0; [0.25, 6, 0.5] at x=9: 0.25 + 6/3 = 2.25
    ("bnsl", {"breaks": 0}, [0.25, 6.0, 0.5], [9.0], [2.25]),
    # bnsl, one break: y = a + b x^-c0 (1 + (x/d)^(1/f))^(-c1 f), with a=1, b=10, c0=0.5, c1=2, d=2, f=0.5
    # (1/f = 2, -c1 f = -1): x=1 -> 10 * 1 / (1 + 0.5^2) = 10/1.25 = 8, y = 9;
    # x=4 -> 10 * 4^-0.5 = 5, 1 + 2^2 = 5, 5/5 = 1, y = 2; x=16 -> 10/4 = 2.5, 1 + 8^2 = 65, y = 1 + 2.5/65 = 27/26
    ("bnsl", {"breaks": 1}, [1.0, 10.0, 0.5, 2.0, 2.0, 0.5], [1.0, 4.0, 16.0], [9.0, 2.0, 27 / 26]),
    # [0.5, 2, 0.5, 1, 100, 0.5] at x=d=100: 0.5 + 2 * 100^-0.5 * (1 + 1)^(-0.5) = 0.5 + 0.2/sqrt(2)
    ("bnsl", {"breaks": 1}, [0.5, 2.0, 0.5, 1.0, 100.0, 0.5], [100.0], [0.5 + 0.2 / 2**0.5]),
    # bnsl, two breaks: a=0.5, b=1, c0=0; break 1 (c=1, d=1, f=1) gives (1 + x)^-1, break 2 (c=1, d=3, f=1)
    # gives (1 + x/3)^-1: x=3 -> 0.5 + (1/4)(1/2) = 0.625; x=1 -> 0.5 + (1/2)(3/4) = 0.875
    ("bnsl", {"breaks": 2}, [0.5, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 3.0, 1.0], [3.0, 1.0], [0.625, 0.875]),
    # sparse: L = (a_S (1-S)^b_S + c_S) N^-b_N + (a_D/D)^b_D + c with [2, 0.5, 1, 0.5, 400, 0.5, 0.25],
    # N=16 (N^-0.5 = 1/4), D=100 ((400/100)^0.5 = 2):
    # S=0      -> (2*1 + 1)/4 + 2 + 0.25 = 3.0
    # S=0.75   -> (2*0.5 + 1)/4 + 2.25 = 2.75
    # S=0.9375 -> (1-S)^0.5 = 1/4, (2/4 + 1)/4 + 2.25 = 2.625
    ("sparse", {}, [2.0, 0.5, 1.0, 0.5, 400.0, 0.5, 0.25],
     [[0.0, 16.0, 100.0], [0.75, 16.0, 100.0], [0.9375, 16.0, 100.0]], [3.0, 2.75, 2.625]),
]


@pytest.mark.parametrize(("law", "opts", "params", "x", "expected"), BY_HAND,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BY_HAND)])
def test_predict_by_hand(law, opts, params, x, expected):
    y = make_law(law, **opts).predict(params, np.array(x))
    assert y.tolist() == pytest.approx(expected, rel=1e-12)


def test_every_registered_law_has_by_hand_values():
    assert {case[0] for case in BY_HAND} == set(LAWS.names())


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
