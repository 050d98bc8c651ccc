"""Plan a training run from a fitted law and a compute budget: which sparsity, model size and
token count minimise the predicted loss, compared with the best dense model.

Assumptions (stated in every plan):

* Training cost is ``C = 6 * N_eff * D`` FLOPs (forward + backward, Kaplan et al. 2020), ``D``
  tokens (or samples), ``N_eff`` the parameters whose cost is paid, depending on ``compute``:

  - ``"gradual"`` (default): dense until pruning starts, cubic GMP pruning from 25% to 75% of
    training, sparse compute exploited in proportion to density. ``N_eff`` is the
    average-parameter count, ``N_dense * (1 - 0.625 S)`` ("The Journey Matters").
  - ``"sparse"``: the sparsity is exploited from step 0 (static sparse training with sparse
    kernels): ``N_eff = N`` (non-zero parameters).
  - ``"dense"``: zeros cost as much as non-zeros (dense kernels): ``N_eff = N_dense``.

* ``N`` is the number of non-zero parameters at the end (what inference pays for), ``S`` the
  sparsity of the pruned weights, ``N_dense = N / (1 - S)``; all parameters are prunable.
* ``params_max`` caps the non-zero (inference) parameter count.

Supported fitted laws: ``sparse`` (L(S, N, D), N = non-zero parameters), ``average-param``
(L(Nbar, D) with Nbar from the schedule above) and ``chinchilla`` (dense only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling.result import FitResult

COMPUTE_MODES = ("gradual", "sparse", "dense")
GMP_AVG_SPARSITY = 0.625  # mean sparsity / final sparsity for cubic pruning from 25% to 75%
DEFAULT_SPARSITIES = (0.0, 0.25, 0.5, 0.625, 0.75, 0.8, 0.875, 0.9, 0.95, 0.975, 0.99)


def cost_params(n_nonzero: np.ndarray, s: float, compute: str) -> np.ndarray:
    """N_eff: the parameter count the training FLOPs are paid on (see module doc)."""
    n_dense = n_nonzero / (1.0 - s)
    if compute == "gradual":
        return n_dense * (1.0 - GMP_AVG_SPARSITY * s)
    if compute == "sparse":
        return n_nonzero
    if compute == "dense":
        return n_dense
    raise SparsecraftError(f"unknown compute mode {compute!r}; allowed: {', '.join(COMPUTE_MODES)}")


def predict_loss(result: FitResult, s: float, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Predicted loss of models with sparsity ``s``, non-zero params ``n`` and tokens ``d``."""
    name = result.law.name
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    if name == "sparse":
        x = np.stack([np.full_like(n, s), n, d], axis=1)
    elif name == "average-param":
        nbar = n / (1.0 - s) * (1.0 - GMP_AVG_SPARSITY * s)
        x = np.stack([nbar, d], axis=1)
    elif name == "chinchilla":
        if s != 0:
            raise SparsecraftError("a chinchilla fit only plans dense models (sparsity 0)")
        x = np.stack([n, d], axis=1)
    else:
        raise SparsecraftError(
            f"cannot plan with law {name!r}: fit 'sparse' (S, N, D), 'average-param' (Nbar, D) or 'chinchilla' (N, D)"
        )
    return result.predict(x)


@dataclass
class Option:
    sparsity: float
    params_nonzero: float
    params_dense: float
    tokens: float
    flops: float
    loss: float


@dataclass
class Plan:
    budget_flops: float
    compute: str
    params_max: float | None
    best: Option
    dense: Option
    per_sparsity: list[Option]
    assumptions: list[str] = field(default_factory=list)

    @property
    def loss_gain_vs_dense(self) -> float:
        return self.dense.loss - self.best.loss

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["loss_gain_vs_dense"] = self.loss_gain_vs_dense
        d["inference_params_ratio"] = self.best.params_nonzero / self.dense.params_nonzero
        return d


def _best_for(
    result: FitResult, s: float, budget: float, params_max: float | None, compute: str, points: int
) -> Option | None:
    """Scan log N on a grid (D = budget / (6 N_eff)), then refine between the grid neighbours."""
    from scipy.optimize import minimize_scalar

    hi = budget / 6.0  # D >= 1 token
    if params_max is not None:
        hi = min(hi, params_max)
    if hi <= 1.0:
        return None

    def loss_at(logn: np.ndarray) -> np.ndarray:
        n = np.exp(logn)
        with np.errstate(all="ignore"):
            out = predict_loss(result, s, n, budget / (6.0 * cost_params(n, s, compute)))
        return np.where(np.isfinite(out), out, np.inf)

    grid = np.linspace(0.0, np.log(hi), points)
    loss = loss_at(grid)
    i = int(np.argmin(loss))
    if not np.isfinite(loss[i]):
        return None
    lo_b, hi_b = grid[max(i - 1, 0)], grid[min(i + 1, points - 1)]
    if hi_b > lo_b:
        r = minimize_scalar(
            lambda v: float(loss_at(np.array([v]))[0]), bounds=(lo_b, hi_b), method="bounded", options={"xatol": 1e-6}
        )
        if r.fun < loss[i]:
            grid[i], loss[i] = r.x, r.fun
    n = float(np.exp(grid[i]))
    d = float(budget / (6.0 * cost_params(np.array(n), s, compute)))
    return Option(s, n, n / (1 - s), d, float(budget), float(loss[i]))


def plan(
    result: FitResult,
    budget_flops: float,
    params_max: float | None = None,
    sparsities: Sequence[float] | None = None,
    compute: str = "gradual",
    points: int = 2000,
) -> Plan:
    """Best (sparsity, non-zero params, tokens) under ``budget_flops`` (and ``params_max``)."""
    if not budget_flops > 0:
        raise SparsecraftError(f"the FLOP budget must be > 0, got {budget_flops}")
    if params_max is not None and not params_max > 0:
        raise SparsecraftError(f"params_max must be > 0, got {params_max}")
    if compute not in COMPUTE_MODES:
        raise SparsecraftError(f"unknown compute mode {compute!r}; allowed: {', '.join(COMPUTE_MODES)}")
    grid = list(sparsities) if sparsities is not None else list(DEFAULT_SPARSITIES)
    if result.law.name == "chinchilla":
        grid = [0.0]
    if any(not 0 <= s < 1 for s in grid):
        raise SparsecraftError(f"sparsities must be in [0, 1), got {grid}")
    if 0.0 not in grid:
        grid = [0.0, *grid]
    options = [o for s in sorted(grid) if (o := _best_for(result, s, budget_flops, params_max, compute, points))]
    if not options:
        raise SparsecraftError("no feasible model under this budget (every prediction is non-finite)")
    dense = next((o for o in options if o.sparsity == 0.0), None)
    if dense is None:
        raise SparsecraftError("no feasible dense model under this budget")
    best = min(options, key=lambda o: o.loss)
    notes = [
        "training FLOPs = 6 * N_eff * D",
        {
            "gradual": "N_eff = N_dense * (1 - 0.625 S): cubic pruning from 25% to 75% of training, "
            "compute proportional to density",
            "sparse": "N_eff = non-zero params: sparsity exploited from the first step",
            "dense": "N_eff = N_dense: zeros cost as much as non-zeros",
        }[compute],
        "N = non-zero (inference) parameters, N_dense = N / (1 - S), all parameters prunable",
        f"law {result.law.name!r} fitted on {int(result.fit_mask.sum())} points; predictions far "
        "outside the fitted range are extrapolations",
    ]
    return Plan(float(budget_flops), compute, params_max, best, dense, options, notes)
