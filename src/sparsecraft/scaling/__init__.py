"""Sparsity scaling laws: fit, extrapolate, plan.

    from sparsecraft.scaling import fit
    res = fit("bnsl", x, y, breaks=1, holdout=3, bootstrap=200)
    res.param_dict, res.rmsle_fit, res.rmsle_holdout, res.intervals()
    res.save("fit.json")

Laws (registry :data:`LAWS`): ``power``, ``chinchilla``, ``average-param``, ``bnsl``,
``sparse``. Also: :func:`average_density` (parameter count averaged over a pruning schedule),
:func:`step_law` (optimal LR / batch size), :func:`plan` (budget -> sparsity, N, D),
:func:`load_table` (CSV / JSON / run folders).
"""

from sparsecraft.scaling.average import average_density, average_param_count
from sparsecraft.scaling.fit import FitError, fit
from sparsecraft.scaling.io import load_table
from sparsecraft.scaling.laws import LAWS, Law, make_law
from sparsecraft.scaling.result import FitResult, load_fit, rmsle
from sparsecraft.scaling.steplaw import step_law

__all__ = [
    "LAWS",
    "FitError",
    "FitResult",
    "Law",
    "average_density",
    "average_param_count",
    "fit",
    "load_fit",
    "load_table",
    "make_law",
    "rmsle",
    "step_law",
]
