"""Sparse linear regression on random supports: a preconditioned Lasso vs Lasso and OMP.

Paper: Chandrasekaran, Meka & Stavropoulos, "Sparse Linear Regression is Easy on Random Supports"
(arXiv 2511.06211, papers.txt). Setting: a design ``X`` (N x d), labels ``y = X w* + xi`` with
sub-Gaussian noise ``xi`` and a k-sparse ``w*`` whose *support is uniformly random* (its values
may be chosen adversarially); the goal is a small in-sample prediction error
``(1/N) ||X w* - X w||^2`` (:func:`prediction_error`). The paper's algorithm has two phases:
Phase 1 finds a good preconditioner of ``X``; Phase 2 solves the regression given it.

DEPARTURE (stated in docs/lab.md): the paper's text past its abstract and outline could not be
read offline, so the two phases here are this module's own reading, not the paper's procedure:

* Phase 1, :func:`find_preconditioner`: peel dense directions. With the columns of the current
  residual design ``R = X M`` scaled to unit RMS (``||R_j||^2 / N = 1``), while the top eigenvalue
  of the column-normalised Gram ``R~^T R~ / N`` exceeds ``spread * (1 + sqrt(d/N))^2`` (``spread``
  times its value for a Gaussian design), take its top singular direction ``u``, keep ``X a = sqrt(N) u``
  as one extra feature and project ``u`` out of every column (``M <- M - a (u^T R) / sqrt(N)``).
  A column-normalised design of bounded spectral norm is what makes random sub-dictionaries well
  conditioned (Tropp 2008, "On the conditioning of random subdictionaries"), which is why a random
  support is the right object here. The number of loops is the number of outlying dense
  directions, not a function of the condition number (every step is a scale-free projection).
* Phase 2, :func:`preconditioned_lasso`: the Lasso on the dictionary ``F = X T`` with
  ``T = [a_1 .. a_r, M diag(1/||R_j||/sqrt(N))]`` (every feature of unit RMS), ``w = T theta``.
  The Lasso's prediction bound needs only bounded column norms and a small ``||theta||_1``
  (the "slow rate" ``~ lambda ||theta||_1``, any design); peeling makes ``||theta||_1`` small
  when ``X`` has a few strong shared directions that a sparse ``w*`` cancels.

Baselines: the Lasso on the column-normalised ``X`` (:func:`lasso`, FISTA on
``(1/2N)||y - F theta||^2 + lambda ||theta||_1`` with the soft threshold of
:func:`sparsecraft.lab.sparse_coding.prox_l1`) and OMP with the true k (:func:`omp`). Every Lasso
uses ``lambda = sigma sqrt(2 log p / N)`` (p features, noise level known to every method) and is
followed by the post-Lasso least-squares refit :func:`refit` (both Lasso variants alike).
"""

from __future__ import annotations

import math

import numpy as np

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt
from sparsecraft.lab.sparse_coding import prox_l1

FAMILIES = ("gaussian", "factor", "factor-ill", "pairs")
METHODS = ("lasso", "omp", "precond-lasso")


def _check_xy(X: np.ndarray, y: np.ndarray | None = None) -> tuple[int, int]:
    if not isinstance(X, np.ndarray) or X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise SparsecraftError(f"X must be a 2-D array with N >= 1 rows and d >= 1 columns, got shape "
                               f"{getattr(X, 'shape', None)}")
    if y is not None and (not isinstance(y, np.ndarray) or y.shape != (X.shape[0],)):
        raise SparsecraftError(f"y must have shape ({X.shape[0]},) to match X {X.shape}, got "
                               f"{getattr(y, 'shape', None)}")
    return X.shape


def prediction_error(X: np.ndarray, w_true: np.ndarray, w_hat: np.ndarray) -> float:
    """The paper's objective: (1/N) ||X w* - X w||^2."""
    n, d = _check_xy(X)
    if np.shape(w_true) != (d,) or np.shape(w_hat) != (d,):
        raise SparsecraftError(f"w_true and w_hat must have shape ({d},), got {np.shape(w_true)} and "
                               f"{np.shape(w_hat)}")
    r = X @ (w_true - w_hat)
    return float(r @ r) / n


def success_probability(errors: np.ndarray | list[float], eps: float) -> float:
    """Fraction of trials whose prediction error is at most ``eps``."""
    e = np.asarray(errors, dtype=float)
    if e.ndim != 1 or e.size == 0 or np.isnan(e).any():
        raise SparsecraftError(f"errors must be a non-empty 1-D list of numbers, got shape {e.shape}")
    if not eps > 0:
        raise SparsecraftError(f"eps must be > 0, got {eps!r}")
    return float(np.mean(e <= eps))


def lasso(F: np.ndarray, y: np.ndarray, lam: float, *, iters: int = 500) -> np.ndarray:
    """FISTA (Beck & Teboulle 2009) on (1/2N)||y - F theta||^2 + lam ||theta||_1, step 1/L with
    L = ||F||_2^2 / N; returns theta."""
    n, p = _check_xy(F, y)
    if not lam >= 0:
        raise SparsecraftError(f"lam must be >= 0, got {lam!r}")
    L = float(np.linalg.norm(F, 2)) ** 2 / n
    if L == 0:
        return np.zeros(p)
    theta = z = np.zeros(p)
    t = 1.0
    for _ in range(iters):
        new = prox_l1(z - F.T @ (F @ z - y) / (n * L), lam / L)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = new + (t - 1) / t_next * (new - theta)
        theta, t = new, t_next
    return theta


def omp(X: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, list[int]]:
    """Orthogonal matching pursuit (Pati et al. 1993): k times, add the column most correlated
    (after scaling every column to unit norm) with the residual, refit least squares on the chosen
    set. Returns (w, chosen indices in order)."""
    n, d = _check_xy(X, y)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(n, d):
        raise SparsecraftError(f"k must be an integer in [1, min(N, d)] = [1, {min(n, d)}], got {k!r}")
    norms = np.linalg.norm(X, axis=0)
    norms[norms == 0] = np.inf
    chosen: list[int] = []
    coef = np.zeros(0)
    r = y.copy()
    for _ in range(k):
        score = np.abs(X.T @ r) / norms
        score[chosen] = -1.0
        chosen.append(int(np.argmax(score)))
        coef = np.linalg.lstsq(X[:, chosen], y, rcond=None)[0]
        r = y - X[:, chosen] @ coef
    w = np.zeros(d)
    w[chosen] = coef
    return w, chosen


def find_preconditioner(X: np.ndarray, *, spread: float = 4.0, max_directions: int | None = None,
                        drop: float = 1e-9) -> tuple[np.ndarray, int]:
    """Phase 1 (this module's reading, see the module docstring): the d x (r + d) matrix ``T`` whose
    features ``X T`` are the ``r`` peeled directions then the residual columns, all of unit RMS
    (residual columns under ``drop`` of their original norm, already spanned, become 0). Returns
    ``(T, r)``."""
    n, d = _check_xy(X)
    if not spread >= 1:
        raise SparsecraftError(f"spread must be >= 1, got {spread!r}")
    cap = min(n - 1, d) if max_directions is None else max_directions
    target = spread * (1 + math.sqrt(d / n)) ** 2
    M = np.eye(d)
    R = X.astype(float, copy=True)
    orig = np.linalg.norm(X, axis=0) / math.sqrt(n)
    peeled: list[np.ndarray] = []
    while True:
        rms = np.linalg.norm(R, axis=0) / math.sqrt(n)
        keep = rms > drop * np.maximum(orig, 1e-300)
        scale = np.where(keep, 1.0 / np.where(keep, rms, 1.0), 0.0)
        if len(peeled) >= cap or not keep.any():
            break
        _, s, vt = np.linalg.svd(R * scale / math.sqrt(n), full_matrices=False)
        if s[0] ** 2 <= target:
            break
        a = M @ (scale * vt[0]) / s[0]  # X a = sqrt(N) u: a unit-RMS feature
        u = X @ a / math.sqrt(n)
        coeff = u @ R / math.sqrt(n)
        M -= np.outer(a, coeff)
        R -= math.sqrt(n) * np.outer(u, coeff)
        peeled.append(a)
    T = np.concatenate([np.stack(peeled, axis=1) if peeled else np.zeros((d, 0)), M * scale], axis=1)
    return T, len(peeled)


def refit(F: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Post-Lasso least squares (Belloni & Chernozhukov 2013): refit ``y`` on the features the Lasso
    kept (when fewer than N), removing the shrinkage bias; otherwise ``theta`` unchanged."""
    n, p = _check_xy(F, y)
    keep = np.flatnonzero(theta)
    if keep.size == 0 or keep.size >= n:
        return theta
    out = np.zeros(p)
    out[keep] = np.linalg.lstsq(F[:, keep], y, rcond=None)[0]
    return out


def lasso_lambda(sigma: float, p: int, n: int) -> float:
    """sigma sqrt(2 log p / N): the level of the largest noise correlation with p unit-RMS features."""
    return sigma * math.sqrt(2 * math.log(max(p, 2)) / n)


def normalised_lasso(X: np.ndarray, y: np.ndarray, sigma: float, *, iters: int = 500) -> np.ndarray:
    """Baseline: the Lasso on X with columns scaled to unit RMS (then :func:`refit`), mapped back to w."""
    n, d = _check_xy(X, y)
    rms = np.linalg.norm(X, axis=0) / math.sqrt(n)
    scale = np.where(rms > 0, 1.0 / np.where(rms > 0, rms, 1.0), 0.0)
    F = X * scale
    return scale * refit(F, y, lasso(F, y, lasso_lambda(sigma, d, n), iters=iters))


def preconditioned_lasso(X: np.ndarray, y: np.ndarray, sigma: float, *, spread: float = 4.0,
                         iters: int = 500) -> tuple[np.ndarray, int]:
    """Phase 1 then Phase 2: ``T`` from :func:`find_preconditioner`, the Lasso on ``X T`` (then
    :func:`refit`), ``w = T theta``. Returns (w, number of peeled directions)."""
    n, _ = _check_xy(X, y)
    T, r = find_preconditioner(X, spread=spread)
    F = X @ T
    theta = refit(F, y, lasso(F, y, lasso_lambda(sigma, T.shape[1], n), iters=iters))
    return T @ theta, r


def make_design(family: str, n: int, d: int, rng: np.random.Generator, *, factors: int = 2,
                delta: float = 0.05) -> tuple[np.ndarray, np.ndarray | None]:
    """A design of the named family and, for the factor families, the loadings ``B`` (factors x d).

    * ``gaussian``: i.i.d. N(0, 1) entries (well conditioned).
    * ``factor``: ``X = Z B + delta G``, Z (N x factors), B, G Gaussian: every column is mostly a
      mix of a few shared directions (strongly correlated columns; column-normalised Gram condition number
      ~3e5 at N = 100, d = 200).
    * ``factor-ill``: the same with ``delta = 1e-6`` (condition number ~8e14 there).
    * ``pairs``: near-duplicate column pairs ``x_2i = g_i``, ``x_2i+1 = g_i + delta h_i``: sparse
      approximate dependencies that only a support holding a whole pair can exploit.
    """
    if family not in FAMILIES:
        raise SparsecraftError(f"unknown design family {family!r}; allowed: {', '.join(FAMILIES)}")
    check_int("N", n, 1)
    check_int("d", d, 1)
    if family == "gaussian":
        return rng.standard_normal((n, d)), None
    if family == "pairs":
        X = rng.standard_normal((n, d))
        X[:, 1::2] = X[:, 0:d - d % 2:2] + delta * rng.standard_normal((n, d // 2))
        return X, None
    dl = 1e-6 if family == "factor-ill" else delta
    B = rng.standard_normal((factors, d))
    return rng.standard_normal((n, factors)) @ B + dl * rng.standard_normal((n, d)), B


def make_signal(X: np.ndarray, k: int, rng: np.random.Generator, B: np.ndarray | None = None) -> np.ndarray:
    """A k-sparse w* on a uniformly random support, scaled to ``(1/N)||X w*||^2 = 1``. Values:
    random signs, then (given loadings ``B``) projected onto ``{B w = 0}`` restricted to the
    support: the adversarial choice that cancels the shared directions (needs k > factors)."""
    n, d = _check_xy(X)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
        raise SparsecraftError(f"k must be an integer in [1, d] = [1, {d}], got {k!r}")
    support = rng.choice(d, size=k, replace=False)
    v = rng.choice([-1.0, 1.0], size=k)
    if B is not None:
        if k <= B.shape[0]:
            raise SparsecraftError(f"k must exceed the number of factors ({B.shape[0]}) to cancel them, got {k}")
        Bs = B[:, support]
        v = v - np.linalg.pinv(Bs) @ (Bs @ v)
    w = np.zeros(d)
    w[support] = v
    return w / math.sqrt(float(np.sum((X @ w) ** 2)) / n)


def pair_signal(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The adversarial support for the ``pairs`` design: k // 2 random whole pairs (2 (k // 2) <= k
    non-zeros) with values (s, -s), scaled to ``(1/N)||X w*||^2 = 1``: ``X w*`` is a sum of the
    small differences ``delta h_i``, so ``||w*||_1`` is ~ 1/delta times larger than on a random support."""
    n, d = _check_xy(X)
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 2 * (d // 2):
        raise SparsecraftError(f"k must be an integer in [2, {2 * (d // 2)}] for {d // 2} column pairs, got {k!r}")
    w = np.zeros(d)
    pairs = rng.choice(d // 2, size=k // 2, replace=False)
    s = rng.choice([-1.0, 1.0], size=pairs.size)
    w[2 * pairs], w[2 * pairs + 1] = s, -s
    return w / math.sqrt(float(np.sum((X @ w) ** 2)) / n)


def solve(method: str, X: np.ndarray, y: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """w from the named method (``lasso``, ``omp`` with the true k, ``precond-lasso``)."""
    if method == "lasso":
        return normalised_lasso(X, y, sigma)
    if method == "omp":
        return omp(X, y, min(k, *X.shape))[0]
    if method == "precond-lasso":
        return preconditioned_lasso(X, y, sigma)[0]
    raise SparsecraftError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")


@EXPERIMENTS.register("random-support")
class RandomSupportExperiment(Experiment):
    """Success probability and prediction error vs N over random supports, for a Gaussian design
    and strongly correlated (factor) designs: Lasso, OMP and the preconditioned Lasso."""

    paper = "Sparse Linear Regression is Easy on Random Supports"
    claim = ("for ANY design X, if the support of the k-sparse w* is random, prediction error eps is reached "
             "with N = poly(k, log d, 1/eps) samples in poly(d, N) time, even for condition numbers up to "
             "2^poly(d); the algorithm first finds a good preconditioner, then solves the regression with it.")

    def __init__(self, d: int = 200, k: int = 5, ns: tuple[int, ...] = (25, 50, 75, 100, 150, 200, 300),
                 families: tuple[str, ...] = FAMILIES, trials: int = 20, sigma: float = 0.5,
                 eps: float = 0.1, seed: int = 0) -> None:
        self.d = check_int("d", d, 2)
        self.k = check_int("k", k, 3, self.d)
        self.ns = tuple(check_int("ns entry", n, 1) for n in ns)
        if not self.ns:
            raise SparsecraftError("ns must list at least one sample size N >= 1")
        for f in families:
            if f not in FAMILIES:
                raise SparsecraftError(f"unknown design family {f!r}; allowed: {', '.join(FAMILIES)}")
        self.families = tuple(families)
        self.trials = check_int("trials", trials, 1)
        self.sigma = check_float("sigma", sigma, 0.0, 10.0, open_low=True)
        self.eps = check_float("eps", eps, 0.0, 10.0, open_low=True)
        self.seed = check_int("seed", seed, 0)

    def run(self, progress: bool = False) -> LabResult:
        rng = np.random.default_rng(self.seed)
        # a case = a design family with random supports; the pairs design also with adversarial ones
        cases = [(f, "random") for f in self.families] + [("pairs", "adversarial")] * ("pairs" in self.families)
        label = {c: c[0] if c[1] == "random" else f"{c[0]}/{c[1]}" for c in cases}
        errors = {label[c]: {m: [] for m in METHODS} for c in cases}
        peeled = {label[c]: [] for c in cases}
        for case in cases:
            fam, support = case
            for n in self.ns:
                per = {m: [] for m in METHODS}
                r_seen = []
                for _ in range(self.trials):  # a fresh design, support and noise per trial
                    X, B = make_design(fam, n, self.d, rng)
                    w = pair_signal(X, self.k, rng) if support == "adversarial" else make_signal(X, self.k, rng, B)
                    y = X @ w + self.sigma * rng.standard_normal(n)
                    for m in METHODS:
                        per[m].append(prediction_error(X, w, solve(m, X, y, self.k, self.sigma)))
                    r_seen.append(find_preconditioner(X)[1])
                for m in METHODS:
                    errors[label[case]][m].append(per[m])
                peeled[label[case]].append(float(np.mean(r_seen)))
        tables = []
        for case in cases:
            c = label[case]
            rows = [[str(n)] + [fmt(success_probability(errors[c][m][i], self.eps)) for m in METHODS]
                    + [fmt(float(np.median(errors[c][m][i])), 3) for m in METHODS] + [fmt(peeled[c][i], 1)]
                    for i, n in enumerate(self.ns)]
            what = ("an adversarial support (whole near-duplicate pairs, cancelling values)" if case[1] == "adversarial"
                    else "a random support")
            tables.append(LabTable(
                f"`{case[0]}` design, {what}: success probability (prediction error <= {self.eps:g}) and median "
                f"prediction error (1/N)||X w* - X w||^2 vs N; d={self.d}, k={self.k}, signal (1/N)||X w*||^2 = 1, "
                f"noise sigma={self.sigma:g}, {self.trials} trials per N (fresh design, support and noise each)",
                ["N"] + [f"P(success) {m}" for m in METHODS] + [f"median err {m}" for m in METHODS]
                + ["peeled directions"], rows))
        first = {c: {m: next((n for i, n in enumerate(self.ns) if success_probability(errors[c][m][i], self.eps)
                              >= 0.9), None) for m in METHODS} for c in errors}
        finding = "smallest N with success probability >= 0.9: " + "; ".join(
            f"{c}: " + ", ".join(f"{m} {first[c][m] if first[c][m] is not None else f'> {self.ns[-1]}'}"
                                 for m in METHODS) for c in errors) + "."
        return LabResult(self.name, self.claim, tables, finding,
                         {"errors": errors, "ns": list(self.ns), "first_n": first, "peeled": peeled})
