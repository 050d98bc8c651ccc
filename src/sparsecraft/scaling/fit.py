"""Fit a scaling law robustly: coarse grid in a reparametrised space, then local least squares.

The recipe follows the BNSL paper's fitting procedure (Caballero et al. 2023): minimise the mean
squared error in log space, ``mean((g(yhat) - g(y))^2)`` with ``g = log`` (or ``log(1 + .)``
as BNSL does, or identity), first by brute force over a grid of candidate parameters (each law
builds its grid relative to the data: offset as a fraction of min y, scale from the curve's
height, breaks inside the data range), then by :func:`scipy.optimize.least_squares` started
from the best few grid points (restarts). Positive parameters are optimised as their logarithm
inside the law's bounds. The best local solution wins; a fit whose parameters or objective are
not finite raises :class:`~sparsecraft.errors.FitError` instead of returning NaN.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling.laws import LOSS_SPACES, Law, make_law
from sparsecraft.scaling.result import FitResult

_CHUNK = 20_000
_PENALTY = 1e3


class FitError(SparsecraftError):
    """The optimiser found no finite solution."""


def transform(law: Law, y: np.ndarray, loss: str) -> np.ndarray:
    """g(y) for the loss space; non-positive values map to a large finite penalty."""
    if loss == "linear":
        return y
    arg = y + 1.0 if loss == "log1p" else y
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(np.where(arg > 0, arg, np.nan))
    return np.where(np.isfinite(out), out, -_PENALTY)


def check_data(law: Law, x: Any, y: Any, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated float arrays; clear errors for NaN, wrong shapes and out-of-domain values."""
    x = law.check_x(x)
    y = np.asarray(y, dtype=float).reshape(-1)
    if len(y) != len(x):
        raise SparsecraftError(f"x has {len(x)} rows but y has {len(y)}")
    for name, arr in (("x", x), ("y", y)):
        bad = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))
        if bad.size:
            raise SparsecraftError(f"{name} has NaN or infinite values at rows {bad[:10].tolist()}")
    law.validate_inputs(x)
    if loss in ("log", "log1p"):
        bad = np.flatnonzero(y <= 0)
        if bad.size:
            raise SparsecraftError(
                f"a log-space fit needs y > 0; rows {bad[:10].tolist()} have y = "
                f"{y[bad[:10]].tolist()} (use --loss linear, or fit an error rate / loss instead)"
            )
    return x, y


def holdout_mask(x: np.ndarray, holdout: int, side: str = "high") -> np.ndarray:
    """True for fit points: the ``holdout`` points with the largest (``side='high'``) or
    smallest (``'low'``) value of the first input are held out to measure extrapolation."""
    n = len(x)
    if holdout < 0 or holdout >= n:
        raise SparsecraftError(f"holdout must be in 0..{n - 1} for {n} points, got {holdout}")
    if side not in ("high", "low"):
        raise SparsecraftError(f"holdout side must be 'high' or 'low', got {side!r}")
    first = x if x.ndim == 1 else x[:, 0]
    order = np.argsort(first, kind="stable")
    held = order[n - holdout :] if side == "high" else order[:holdout]
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return mask


def grid_search(law: Law, x: np.ndarray, y: np.ndarray, loss: str, keep: int) -> np.ndarray:
    """The ``keep`` best grid candidates (rows), by mean squared residual in loss space."""
    cand = np.asarray(law.grid(x, y), dtype=float)
    lo, hi = law.bounds()
    cand = np.clip(cand, lo, hi)
    gy = transform(law, y, loss)
    scores = np.empty(len(cand))
    with np.errstate(all="ignore"):
        for s in range(0, len(cand), _CHUNK):
            block = cand[s : s + _CHUNK]
            pred = law.predict([block[:, j : j + 1] for j in range(block.shape[1])], x)
            r = transform(law, np.asarray(pred, dtype=float), loss) - gy
            scores[s : s + _CHUNK] = np.mean(r * r, axis=1)
    scores[~np.isfinite(scores)] = np.inf
    order = np.argsort(scores, kind="stable")
    order = order[np.isfinite(scores[order])]
    return cand[order[:keep]]


class _Space:
    """Map natural parameters <-> optimiser space (log for positive parameters)."""

    def __init__(self, law: Law) -> None:
        self.pos = np.asarray(law.positive(), dtype=bool)
        lo, hi = law.bounds()
        self.lo, self.hi = self.to_q(lo), self.to_q(hi)

    def to_q(self, p: np.ndarray) -> np.ndarray:
        q = np.asarray(p, dtype=float).copy()
        with np.errstate(divide="ignore"):
            q[self.pos] = np.log(q[self.pos])
        return q

    def to_p(self, q: np.ndarray) -> np.ndarray:
        p = np.asarray(q, dtype=float).copy()
        p[self.pos] = np.exp(np.clip(p[self.pos], -700, 700))
        return p

    def inside(self, q: np.ndarray) -> np.ndarray:
        span = np.where(np.isfinite(self.hi - self.lo), self.hi - self.lo, 1.0)
        eps = 1e-9 * np.maximum(span, 1.0)
        return np.clip(q, self.lo + eps, self.hi - eps)


def local_fit(
    law: Law, x: np.ndarray, y: np.ndarray, loss: str, p0: np.ndarray, max_nfev: int = 4000
) -> tuple[np.ndarray, float]:
    """Least squares in loss space from ``p0``; returns (params, mean squared residual)."""
    space = _Space(law)
    gy = transform(law, y, loss)

    def residuals(q: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            pred = np.asarray(law.predict(list(space.to_p(q)), x), dtype=float)
        r = transform(law, pred, loss) - gy
        return np.where(np.isfinite(r), r, _PENALTY)

    q0 = space.inside(space.to_q(p0))
    res = least_squares(
        residuals,
        q0,
        bounds=(space.lo, space.hi),
        method="trf",
        x_scale="jac",
        ftol=1e-12,
        xtol=1e-12,
        gtol=1e-12,
        max_nfev=max_nfev,
    )
    p = law.canonical(space.to_p(res.x))
    return p, float(np.mean(res.fun**2))


def fit(
    law: str | Law,
    x: Any,
    y: Any,
    *,
    loss: str = "auto",
    holdout: int = 0,
    holdout_side: str = "high",
    fit_mask: Sequence[bool] | None = None,
    restarts: int = 8,
    p0: Sequence[float] | None = None,
    bootstrap: int = 0,
    level: float = 0.9,
    seed: int = 0,
    x_names: Sequence[str] | None = None,
    y_name: str = "y",
    **law_options: Any,
) -> FitResult:
    """Fit ``law`` (a name such as ``"bnsl"`` plus options, or a :class:`Law`) to ``(x, y)``.

    Args:
        loss: residual space ``"log"``, ``"log1p"`` (BNSL's), ``"linear"`` or ``"auto"`` (the
            law's default).
        holdout: number of points (largest first input, or smallest with
            ``holdout_side="low"``) excluded from the fit and used for the extrapolation RMSLE.
        fit_mask: explicit boolean mask of fit points (overrides ``holdout``).
        restarts: number of best grid points polished by local least squares.
        p0: an extra starting point (natural space).
        bootstrap: number of residual-bootstrap refits for intervals (0 = none).
    """
    t0 = time.perf_counter()
    law = make_law(law, **law_options)
    loss = law.default_loss if loss == "auto" else loss
    if loss not in LOSS_SPACES:
        raise SparsecraftError(f"unknown loss {loss!r}; allowed: auto, {', '.join(LOSS_SPACES)}")
    x, y = check_data(law, x, y, loss)
    if fit_mask is not None:
        mask = np.asarray(fit_mask, dtype=bool)
        if mask.shape != y.shape:
            raise SparsecraftError(f"fit_mask has {mask.size} entries for {y.size} points")
    else:
        mask = holdout_mask(x, int(holdout), holdout_side)
    n_fit, n_par = int(mask.sum()), law.n_params
    if n_fit < n_par:
        raise SparsecraftError(
            f"too few points: law {law.name!r} has {n_par} parameters "
            f"({', '.join(law.param_names())}) and needs at least {n_par} fit points, got {n_fit}"
            + (f" after holding out {len(y) - n_fit}" if n_fit < len(y) else "")
        )
    xf, yf = x[mask], y[mask]
    starts = list(grid_search(law, xf, yf, loss, max(1, int(restarts))))
    if p0 is not None:
        if len(p0) != n_par:
            raise SparsecraftError(f"p0 needs {n_par} values ({', '.join(law.param_names())})")
        starts.insert(0, np.asarray(p0, dtype=float))
    if not starts:
        raise FitError(f"no grid point of law {law.name!r} gives a finite prediction on the data")
    best: tuple[np.ndarray, float] | None = None
    for start in starts:
        try:
            p, obj = local_fit(law, xf, yf, loss, start)
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(p)) and np.isfinite(obj) and (best is None or obj < best[1]):
            best = (p, obj)
    if best is None:
        raise FitError(f"law {law.name!r}: every local fit failed or returned non-finite values")
    result = FitResult(
        law=law,
        params=best[0],
        loss=loss,
        x=x,
        y=y,
        fit_mask=mask,
        objective=best[1],
        x_names=list(x_names or law.inputs),
        y_name=y_name,
        level=level,
    )
    if bootstrap:
        from sparsecraft.scaling.bootstrap import bootstrap_params

        result.boot_params = bootstrap_params(result, int(bootstrap), seed=seed)
    result.fit_time_s = time.perf_counter() - t0
    return result
