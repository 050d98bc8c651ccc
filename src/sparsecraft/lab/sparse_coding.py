"""Beyond l1 sparse coding: lq (0 <= q < 1) and CEL0 penalties with an ISTA solver.

Paper: Rentzeperis et al., "Beyond ell_1 sparse coding in V1" (papers.txt). The sparse code of
a signal ``y`` on a dictionary ``A`` (unit-norm columns ``a_i``) minimises

    0.5 ||A x - y||^2 + g(x)

by ISTA, ``x <- prox_{gamma g}(x - gamma A^T (A x - y))`` with step ``gamma = 1 / ||A||_2^2``.
The paper's point is that the soft threshold of ``g = lam ||x||_1`` is a poor choice next to
thresholds of penalties closer to l0:

* ``l1``: soft threshold ``sign(z) max(|z| - t, 0)``, ``t = gamma lam``.
* ``lq`` (0 < q < 1), ``g = lam sum |x_i|^q``: the prox is 0 for
  ``|z| <= (2-q)/(2-2q) (2 t (1-q))^(1/(2-q))`` and otherwise the larger root of
  ``x + t q x^(q-1) = |z|`` (Marjanovic & Solo 2012; ``q = 1/2`` is Xu et al.'s half threshold).
* ``l0``, ``g = lam ||x||_0``: hard threshold at ``sqrt(2 t)`` (iterative hard thresholding).
* ``cel0`` (Soubies, Blanc-Feraud & Aubert 2015, the "continuous exact" relaxation of l0 that has
  the same global minimisers as ``0.5||Ax-y||^2 + lam ||x||_0``):
  ``g = sum_i lam - a_i^2/2 (|x_i| - sqrt(2 lam)/a_i)^2 1{|x_i| <= sqrt(2 lam)/a_i}`` whose prox
  (for ``a_i^2 gamma < 1``) is ``sign(z) min(|z|, max(|z| - sqrt(2 lam) a_i gamma, 0) / (1 - a_i^2 gamma))``.

Every penalty is run along the same continuation path of *prox thresholds* (the smallest
``|z|`` a coordinate needs to become non-zero), from ``max |A^T y|`` down, so the penalties are
compared at equal thresholds rather than at incomparable ``lam`` values.
"""

from __future__ import annotations

import math

import numpy as np

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt

PENALTIES = ("l1", "lq", "l0", "cel0")


def _check_penalty(penalty: str, q: float) -> None:
    if penalty not in PENALTIES:
        raise SparsecraftError(f"unknown penalty {penalty!r}; allowed: {', '.join(PENALTIES)}")
    if penalty == "lq" and not 0 < q < 1:
        raise SparsecraftError(f"penalty 'lq' needs 0 < q < 1, got q={q!r} (use 'l0' or 'l1' for the ends)")


def prox_l1(z: np.ndarray, t: float) -> np.ndarray:
    """Soft threshold: argmin_x 0.5 (x - z)^2 + t |x|."""
    return np.sign(z) * np.maximum(np.abs(z) - t, 0.0)


def prox_l0(z: np.ndarray, t: float) -> np.ndarray:
    """Hard threshold: argmin_x 0.5 (x - z)^2 + t [x != 0] keeps z where |z| > sqrt(2 t)."""
    return np.where(np.abs(z) > math.sqrt(2 * t), z, 0.0)


def lq_threshold(t: float, q: float) -> float:
    """The |z| below which the lq prox (weight t) is 0: (2-q)/(2-2q) (2 t (1-q))^(1/(2-q))."""
    return (2 - q) / (2 - 2 * q) * (2 * t * (1 - q)) ** (1 / (2 - q))


def prox_lq(z: np.ndarray, t: float, q: float, iters: int = 60) -> np.ndarray:
    """argmin_x 0.5 (x - z)^2 + t |x|^q for 0 < q < 1, elementwise.

    Above :func:`lq_threshold` the minimiser is the root of ``x + t q x^(q-1) = |z|`` on
    ``x >= (t q (1-q))^(1/(2-q))`` (where that function increases), found by bisection.
    """
    z = np.asarray(z, dtype=float)
    if t <= 0:
        return z.copy()
    az = np.abs(z)
    x_min = (t * q * (1 - q)) ** (1 / (2 - q))
    lo = np.full_like(az, x_min)
    hi = np.maximum(az, x_min)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = mid + t * q * mid ** (q - 1) < az
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return np.where(az > lq_threshold(t, q), np.sign(z) * 0.5 * (lo + hi), 0.0)


def cel0_penalty(x: np.ndarray, lam: float, a: np.ndarray | float = 1.0) -> np.ndarray:
    """CEL0 value per coordinate: lam - a^2/2 (|x| - sqrt(2 lam)/a)^2 where |x| <= sqrt(2 lam)/a, else lam."""
    a = np.broadcast_to(np.asarray(a, dtype=float), np.shape(x))
    knee = math.sqrt(2 * lam) / a
    return np.where(np.abs(x) <= knee, lam - a**2 / 2 * (np.abs(x) - knee) ** 2, lam)


def prox_cel0(z: np.ndarray, lam: float, step: float, a: np.ndarray | float = 1.0) -> np.ndarray:
    """argmin_x 0.5 (x - z)^2 + step * CEL0(x) (Soubies et al. 2015), needs a^2 step < 1."""
    a = np.asarray(a, dtype=float)
    if np.any(a**2 * step >= 1):
        raise SparsecraftError(f"CEL0 prox needs a_i^2 * step < 1, got max {float(np.max(a**2 * step)):.3g}")
    az = np.abs(z)
    shrunk = np.maximum(az - math.sqrt(2 * lam) * a * step, 0.0) / (1 - a**2 * step)
    return np.sign(z) * np.minimum(az, shrunk)


def lam_for_threshold(penalty: str, thr: float, step: float, q: float = 0.5) -> float:
    """The penalty weight ``lam`` whose prox (step ``step``, unit-norm atoms) zeroes |z| <= thr."""
    _check_penalty(penalty, q)
    if penalty == "l1":
        return thr / step
    if penalty == "l0":
        return thr**2 / (2 * step)
    if penalty == "cel0":
        return (thr / step) ** 2 / 2
    # invert lq_threshold: thr = c (2 t (1-q))^(1/(2-q)), t = step * lam
    c = (2 - q) / (2 - 2 * q)
    return (thr / c) ** (2 - q) / (2 * (1 - q)) / step


def prox(penalty: str, z: np.ndarray, lam: float, step: float, q: float = 0.5) -> np.ndarray:
    """prox of ``step * g`` for the named penalty (unit-norm atoms for CEL0)."""
    _check_penalty(penalty, q)
    if penalty == "l1":
        return prox_l1(z, step * lam)
    if penalty == "l0":
        return prox_l0(z, step * lam)
    if penalty == "lq":
        return prox_lq(z, step * lam, q)
    return prox_cel0(z, lam, step)


def ista(A: np.ndarray, y: np.ndarray, penalty: str, thresholds: np.ndarray, *, q: float = 0.5,
         iters: int = 100, step: float | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """ISTA with continuation over ``thresholds`` (largest first), batched over leading axes.

    ``A``: (..., m, n) with unit-norm columns, ``y``: (..., m). Returns the final codes (..., n)
    and the code at the end of each continuation stage. ``step`` defaults to 1 / max ||A||_2^2
    (times 0.99 so that CEL0's ``a^2 step < 1`` holds for an orthogonal dictionary too).
    """
    _check_penalty(penalty, q)
    if step is None:
        step = 0.99 / float(np.max(np.linalg.norm(A, ord=2, axis=(-2, -1)) ** 2))
    At = np.swapaxes(A, -1, -2)
    x = np.zeros(A.shape[:-2] + (A.shape[-1],))
    path = []
    for thr in np.asarray(thresholds, dtype=float):
        lam = lam_for_threshold(penalty, float(thr), step, q)
        for _ in range(iters):
            r = np.einsum("...mn,...n->...m", A, x) - y
            x = prox(penalty, x - step * np.einsum("...nm,...m->...n", At, r), lam, step, q)
        path.append(x.copy())
    return x, path


def random_problems(trials: int, m: int, n: int, k: int, rng: np.random.Generator,
                    noise: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``trials`` Gaussian dictionaries with unit-norm columns, k-sparse codes (N(0, 1) amplitudes
    on a uniform support), measurements ``y = A x + noise * N(0, 1) / sqrt(m)``."""
    A = rng.standard_normal((trials, m, n))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    x = np.zeros((trials, n))
    for i in range(trials):
        idx = rng.choice(n, size=k, replace=False)
        x[i, idx] = rng.standard_normal(k)
    e = noise * rng.standard_normal((trials, m)) / math.sqrt(m)
    return A, x, np.einsum("tmn,tn->tm", A, x) + e, e


@EXPERIMENTS.register("sparse-coding")
class SparseCodingExperiment(Experiment):
    """Beyond l1 sparse coding: lq / l0 / CEL0 thresholds vs the l1 soft threshold (ISTA)
    on random dictionaries: recovery phase transition and code density at equal reconstruction."""

    paper = "Beyond ell_1 sparse coding in V1"
    claim = ("soft thresholding (l1) is suboptimal next to penalties closer to l0 (lq with q < 1, "
             "CEL0): l1 needs a denser code to reach the same reconstruction error.")

    def __init__(self, m: int = 40, n: int = 80, ks: tuple[int, ...] = (6, 10, 14, 18, 22),
                 trials: int = 20, q: float = 0.5, noise: float = 0.1, stages: int = 20,
                 iters: int = 200, seed: int = 0) -> None:
        self.m, self.n = check_int("m", m, 2), check_int("n", n, 2)
        self.ks = tuple(check_int("ks entry", k, 1, self.m - 1) for k in ks)
        self.trials = check_int("trials", trials, 1)
        self.q = check_float("q", q, 0.0, 1.0, open_low=True)
        if self.q >= 1:
            raise SparsecraftError(f"q must be < 1 (the l1 case is the baseline), got {q!r}")
        self.noise = check_float("noise", noise, 0.0, 10.0)
        self.stages, self.iters = check_int("stages", stages, 2), check_int("iters", iters, 1)
        self.seed = check_int("seed", seed, 0)

    def _thresholds(self, A: np.ndarray, y: np.ndarray, floor: float) -> np.ndarray:
        top = float(np.max(np.abs(np.einsum("tmn,tm->tn", A, y))))
        return np.geomspace(top, top * floor, self.stages)

    def run(self, progress: bool = False) -> LabResult:
        rng = np.random.default_rng(self.seed)
        names = [f"l{self.q:g}" if p == "lq" else p for p in PENALTIES]
        # 1) noiseless phase transition: success = relative error < 1e-2 (the support and values found)
        success = {p: [] for p in PENALTIES}
        for k in self.ks:
            A, x, y, _ = random_problems(self.trials, self.m, self.n, k, rng)
            thr = self._thresholds(A, y, 1e-4)
            for p in PENALTIES:
                xh, _ = ista(A, y, p, thr, q=self.q, iters=self.iters)
                err = np.linalg.norm(xh - x, axis=1) / np.linalg.norm(x, axis=1)
                success[p].append(float(np.mean(err < 1e-2)))
        t1 = LabTable(f"Exact recovery rate (relative error < 1e-2) vs sparsity k: noiseless, Gaussian "
                      f"dictionary m={self.m} x n={self.n} (unit-norm atoms), N(0, 1) amplitudes, "
                      f"{self.trials} trials per k, ISTA with {self.stages} continuation stages x {self.iters} "
                      "iterations",
                      ["k", "k/m"] + names,
                      [[str(k), fmt(k / self.m)] + [fmt(success[p][i]) for p in PENALTIES]
                       for i, k in enumerate(self.ks)])
        # 2) noisy codes at equal reconstruction: along each path, the first stage whose residual
        #    reaches the noise level (discrepancy principle); code density and support quality there
        k_mid = self.ks[min(1, len(self.ks) - 1)]
        A, x, y, e = random_problems(self.trials, self.m, self.n, k_mid, rng, noise=self.noise)
        thr = self._thresholds(A, y, 1e-3)
        target = np.linalg.norm(e, axis=1)
        density: dict[str, list[float]] = {}
        rows = []
        for p, label in zip(PENALTIES, names):
            _, path = ista(A, y, p, thr, q=self.q, iters=self.iters)
            nnz, recall, precision, resid = [], [], [], []
            for t in range(self.trials):
                res = [np.linalg.norm(A[t] @ s[t] - y[t]) for s in path]
                stage = next((i for i, r in enumerate(res) if r <= target[t]), len(path) - 1)
                code = path[stage][t]
                found, true = code != 0, x[t] != 0
                nnz.append(int(found.sum()))
                recall.append((found & true).sum() / true.sum())
                precision.append((found & true).sum() / max(found.sum(), 1))
                resid.append(res[stage] / np.linalg.norm(y[t]))
            density[p] = nnz
            rows.append([label, fmt(float(np.mean(nnz)), 1), fmt(float(np.mean(precision))),
                         fmt(float(np.mean(recall))), fmt(float(np.mean(resid)), 3)])
        t2 = LabTable(f"Codes at equal reconstruction error (first continuation stage with residual <= "
                      f"noise), k={k_mid}, noise std {self.noise}/sqrt(m)",
                      ["penalty", f"non-zeros (true k={k_mid})", "support precision", "support recall",
                       "relative residual"], rows)
        k50 = {p: max([k for k, r in zip(self.ks, success[p]) if r >= 0.5], default=0) for p in PENALTIES}
        finding = ("largest k recovered in at least half the trials: "
                   + ", ".join(f"{lab} k={k50[p]}" for p, lab in zip(PENALTIES, names))
                   + f" (m={self.m}); at equal reconstruction error l1 uses {np.mean(density['l1']):.1f} "
                   f"non-zeros against {np.mean(density['cel0']):.1f} for CEL0 and "
                   f"{np.mean(density['lq']):.1f} for l{self.q:g} (true {k_mid}).")
        return LabResult(self.name, self.claim, [t1, t2], finding,
                         {"success": success, "ks": list(self.ks), "nnz": density, "k_noisy": k_mid, "k50": k50})
