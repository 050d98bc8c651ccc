"""Planner: the dense optimum matches the Chinchilla closed form; sparse plans vs dense."""

import numpy as np
import pytest

from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling import fit, make_law
from sparsecraft.scaling.planner import cost_params, plan

NM = np.stack(np.meshgrid(np.geomspace(1e6, 1e9, 5), np.geomspace(1e8, 1e11, 5)), -1).reshape(-1, 2)
SND = np.array([(s, n, d) for s in (0, 0.5, 0.75, 0.875) for n in (1e6, 3e6, 1e7, 3e7) for d in (1e8, 1e9, 1e10)])


def _fit(name, true, x):
    law = make_law(name)
    return fit(law, x, law.predict(true, x))


def test_dense_optimum_matches_closed_form():
    E, A, a, B, b = 1.7, 406.4, 0.34, 410.7, 0.28
    res = _fit("chinchilla", [E, A, a, B, b], NM)
    C = 1e21
    pl = plan(res, C)
    # minimise A N^-a + B D^-b s.t. 6 N D = C  ->  N = G (C/6)^(b/(a+b)), G = (aA/(bB))^(1/(a+b))
    g = (a * A / (b * B)) ** (1 / (a + b))
    n_opt = g * (C / 6) ** (b / (a + b))
    assert pl.best.sparsity == 0.0 and pl.dense is pl.best
    assert pl.best.params_nonzero == pytest.approx(n_opt, rel=0.02)
    assert 6 * pl.best.params_nonzero * pl.best.tokens == pytest.approx(C, rel=1e-9)


def test_sparse_plan_beats_dense_and_respects_cap():
    res = _fit("sparse", [30.0, 0.8, 8.0, 0.25, 4e7, 0.3, 1.5], SND)
    pl = plan(res, 1e18, params_max=1e7)
    assert pl.best.sparsity > 0
    assert pl.best.loss < pl.dense.loss
    assert all(o.params_nonzero <= 1e7 * (1 + 1e-9) for o in pl.per_sparsity)
    for o in pl.per_sparsity:  # every option spends the whole budget
        assert 6 * cost_params(np.array(o.params_nonzero), o.sparsity, "gradual") * o.tokens == pytest.approx(1e18)
    d = pl.to_dict()
    assert d["loss_gain_vs_dense"] > 0 and any("6 * N_eff * D" in a for a in d["assumptions"])


def test_cost_modes():
    n = np.array(100.0)
    assert cost_params(n, 0.9, "sparse") == pytest.approx(100)
    assert cost_params(n, 0.9, "dense") == pytest.approx(1000)
    assert cost_params(n, 0.9, "gradual") == pytest.approx(1000 * 0.4375)


def test_bad_plans():
    res = _fit("power", [0.5, 20.0, 0.4], np.geomspace(10, 1e5, 20))
    with pytest.raises(SparsecraftError, match="cannot plan with law 'power'"):
        plan(res, 1e18)
    res = _fit("chinchilla", [1.7, 400.0, 0.34, 410.0, 0.28], NM)
    with pytest.raises(SparsecraftError, match="budget must be > 0"):
        plan(res, 0)
    with pytest.raises(SparsecraftError, match="compute mode"):
        plan(res, 1e18, compute="magic")


def test_average_param_plan_uses_gmp_average():
    # with Nbar = N_dense (1 - 0.625 S) and gradual compute 6 Nbar D, loss depends on (Nbar, D)
    # only, so every sparsity reaches the dense optimum loss with N_dense = Nbar / (1 - 0.625 S)
    res = _fit("average-param", [1.7, 406.4, 0.34, 410.7, 0.28], NM)
    pl = plan(res, 1e20, sparsities=[0.5, 0.9])
    losses = [o.loss for o in pl.per_sparsity]
    assert max(losses) - min(losses) < 1e-6
    s9 = next(o for o in pl.per_sparsity if o.sparsity == 0.9)
    assert s9.params_dense * 0.4375 == pytest.approx(pl.dense.params_nonzero, rel=1e-3)
