"""The fitter: BNSL reference refit, hold-out errors, clear errors on bad inputs."""

import numpy as np
import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling import fit, make_law, rmsle
from sparsecraft.scaling.fit import holdout_mask
from sparsecraft.scaling.reference import (
    BNSL_ADDITION_FIT_POINTS,
    BNSL_ADDITION_REFERENCE,
    BNSL_ADDITION_X,
    BNSL_ADDITION_Y,
)


def test_bnsl_reference_refit_within_5_percent():
    # ALGORITHMS.md: 4-digit addition, dataset-size axis, 1 break, first 14 points
    holdout = len(BNSL_ADDITION_X) - BNSL_ADDITION_FIT_POINTS
    res = fit("bnsl", BNSL_ADDITION_X, BNSL_ADDITION_Y, breaks=1, holdout=holdout)
    assert res.loss == "log1p"
    assert int(res.fit_mask.sum()) == 14 and res.fit_mask[:14].all()
    got = {**res.param_dict, "rmsle_fit": res.rmsle_fit, "rmsle_holdout": res.rmsle_holdout}
    for key, ref in BNSL_ADDITION_REFERENCE.items():
        assert got[key] == pytest.approx(ref, rel=0.05), key


def test_rmsle_definition():
    assert rmsle(np.array([np.e, 1.0]), np.array([1.0, 1.0])) == pytest.approx(np.sqrt(0.5))
    assert rmsle(np.array([-1.0]), np.array([1.0])) == float("inf")
    assert rmsle(np.array([]), np.array([])) is None


def test_holdout_sides():
    x = np.array([5.0, 1.0, 3.0, 4.0, 2.0])
    assert holdout_mask(x, 2, "high").tolist() == [False, True, True, False, True]
    assert holdout_mask(x, 2, "low").tolist() == [True, False, True, True, False]
    with pytest.raises(SparsecraftError, match="holdout"):
        holdout_mask(x, 5)


def test_holdout_extrapolation_error_reported():
    law = make_law("power")
    x = np.geomspace(1, 1e4, 12)
    y = law.predict([0.2, 3.0, 0.5], x) * np.exp(0.01 * np.sin(np.arange(12)))
    res = fit(law, x, y, holdout=3)
    assert res.summary()["n_holdout"] == 3
    assert 0 < res.rmsle_holdout < 0.1


def test_too_few_points():
    with pytest.raises(SparsecraftError, match="too few points.*6 parameters"):
        fit("bnsl", [1, 2, 3, 4, 5], [5, 4, 3, 2, 1], breaks=1)
    with pytest.raises(SparsecraftError, match="after holding out 2"):
        fit("power", [1, 2, 3, 4], [4, 3, 2, 1], holdout=2)


def test_non_positive_values_for_log_fits():
    with pytest.raises(SparsecraftError, match="y > 0"):
        fit("power", [1, 2, 3, 4], [1.0, 0.5, 0.0, -0.1])
    with pytest.raises(SparsecraftError, match="x > 0"):
        fit("power", [0, 1, 2, 3], [1.0, 0.5, 0.4, 0.3])
    res = fit("power", [1, 2, 4, 8, 16], [1.0, 0.6, 0.4, 0.3, 0.25], loss="linear")
    assert np.all(np.isfinite(res.params))


def test_nan_inputs():
    with pytest.raises(SparsecraftError, match="y has NaN.*rows \\[2\\]"):
        fit("power", [1, 2, 3, 4], [1.0, 0.5, float("nan"), 0.3])
    with pytest.raises(SparsecraftError, match="x has NaN"):
        fit("power", [1, float("inf"), 3, 4], [1.0, 0.5, 0.4, 0.3])
    with pytest.raises(SparsecraftError, match="rows but y has"):
        fit("power", [1, 2, 3], [1.0, 0.5])


def test_unknown_loss_and_bad_p0():
    with pytest.raises(SparsecraftError, match="unknown loss"):
        fit("power", [1, 2, 3, 4], [4, 3, 2, 1], loss="l1")
    with pytest.raises(SparsecraftError, match="p0 needs 3"):
        fit("power", [1, 2, 3, 4], [4, 3, 2, 1], p0=[1, 2])


def test_never_returns_nan_params_on_hostile_data():
    rng = np.random.default_rng(0)
    x = np.geomspace(1, 100, 10)
    y = np.exp(rng.normal(size=10))  # no trend at all
    res = fit("bnsl", x, y, breaks=1)
    assert np.all(np.isfinite(res.params)) and np.isfinite(res.objective)
