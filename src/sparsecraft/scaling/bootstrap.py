"""Bootstrap confidence intervals for a fitted law (residual bootstrap in the loss space).

The design points are kept; each replicate adds resampled fit residuals (rescaled by
sqrt(n / (n - p)) for the degrees of freedom used by the fit) to the fitted curve in the loss
space (log, log1p or linear), refits from the best parameters, and keeps the refit parameters.
Percentile intervals of those replicates are the confidence intervals; their predictions give
the confidence band in plots (Efron & Tibshirani 1993, ch. 9).
"""

from __future__ import annotations

import numpy as np

from sparsecraft.scaling.fit import local_fit, transform
from sparsecraft.scaling.result import FitResult


def _inverse(g: np.ndarray, loss: str) -> np.ndarray:
    if loss == "log":
        return np.exp(g)
    if loss == "log1p":
        return np.exp(g) - 1.0
    return g


def bootstrap_params(result: FitResult, n: int, seed: int = 0) -> np.ndarray:
    """``(n_ok, n_params)`` parameters of ``n`` residual-bootstrap refits (failed refits are
    dropped; the count is reported by :meth:`FitResult.summary`)."""
    from tqdm import tqdm

    law, loss = result.law, result.loss
    m = result.fit_mask
    x, y = result.x[m], result.y[m]
    g_hat = transform(law, result.predict(x), loss)
    resid = transform(law, y, loss) - g_hat
    k = len(y)
    dof = k - law.n_params
    resid = (resid - resid.mean()) * (np.sqrt(k / dof) if dof > 0 else 1.0)
    rng = np.random.default_rng(seed)
    out = []
    for _ in tqdm(range(n), desc="bootstrap", disable=n < 50, leave=False):
        y_star = _inverse(g_hat + rng.choice(resid, size=k, replace=True), loss)
        try:
            p, obj = local_fit(law, x, y_star, loss, result.params, max_nfev=1000)
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(p)) and np.isfinite(obj):
            out.append(p)
    return np.asarray(out, dtype=float).reshape(-1, law.n_params)
