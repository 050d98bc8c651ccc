"""Retrieval margins vs embedding dimension for k-sparse relevance.

Paper: "Is Dimensionality a Barrier for Retrieval Models?" (papers.txt). Queries ``j`` and
documents ``i`` get unit-norm embeddings ``U_j``, ``V_i`` in ``R^d``; the margin of a relevance
matrix ``A`` (1 = relevant) is the largest ``m`` with ``<U_j, V_i> >= m`` where ``A_ji = 1`` and
``<= -m`` elsewhere, i.e. ``m(d, A) = max_{U, V} min_{j, i} s_ji <U_j, V_i>`` with ``s = 2A - 1``.
For ``A`` = every k-sparse row over n documents the paper shows ``m(inf, A) = Theta(k^-1/2)`` and
that dimension ``d = O(k log(n/k))`` is necessary and sufficient to reach it.

Here: :func:`ksparse_relevance` builds that ``A``; :func:`symmetric_embeddings` is the explicit
``d = n + 1`` construction ``V_i = (sqrt(1-b^2) e_i, b)``, ``U_j = (c 1_{S_j}, -g)`` with
``b^2 = 1/(1 + 2 sqrt k)``, whose margin is exactly ``1 / (1 + 2 sqrt k)`` (a certificate that
``m(inf) >= 1/(1 + 2 sqrt k)``); :func:`optimise_margin` maximises the margin of free embeddings
in a given ``d`` (Adam on a soft-min of the signed scores, projected to the sphere, with the
temperature rising so the soft-min approaches the min). The experiment finds the smallest ``d``
whose optimised margin reaches 90% of the high-dimensional optimum and sets it next to
``k log(n/k)``.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt


def ksparse_relevance(n: int, k: int) -> np.ndarray:
    """The C(n, k) x n 0/1 matrix whose rows are every k-subset of the n documents, once."""
    if not 1 <= k <= n:
        raise SparsecraftError(f"need 1 <= k <= n, got n={n}, k={k}")
    rows = list(combinations(range(n), k))
    A = np.zeros((len(rows), n))
    for j, r in enumerate(rows):
        A[j, list(r)] = 1.0
    return A


def margin(U: np.ndarray, V: np.ndarray, A: np.ndarray) -> float:
    """min_{j,i} (2 A_ji - 1) <U_j, V_i> for unit-norm rows of U (queries) and V (documents)."""
    return float(np.min((2 * A - 1) * (U @ V.T)))


def symmetric_embeddings(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The d = n + 1 construction for a relevance matrix with k ones per row (see module doc)."""
    k = A.sum(axis=1)
    if not np.all(k == k[0]) or k[0] < 1:
        raise SparsecraftError("the symmetric construction needs the same number k >= 1 of relevant documents per row")
    k, n = float(k[0]), A.shape[1]
    t = 1 / (1 + 2 * math.sqrt(k))  # b^2
    m = 1 / (1 + 2 * math.sqrt(k))
    b, g = math.sqrt(t), m / math.sqrt(t)
    c = 2 * m / math.sqrt(1 - t)
    V = np.hstack([math.sqrt(1 - t) * np.eye(n), np.full((n, 1), b)])
    U = np.hstack([c * A, np.full((A.shape[0], 1), -g)])
    return U, V


def optimise_margin(A: np.ndarray, d: int, *, steps: int = 600, restarts: int = 3, lr: float = 0.05,
                    seed: int = 0) -> tuple[float, np.ndarray, np.ndarray]:
    """Best margin of free unit-norm embeddings in R^d over ``restarts`` random starts.

    Minimises the soft-min loss ``(1/T) log sum exp(-T s_ji <U_j, V_i>)`` with T rising
    geometrically from 5 to 200 by Adam (hand-written gradients: with ``W = softmax(-T s * G)``,
    ``dL/dG = -s * W``), renormalising the rows after every step and decaying the step size;
    returns the exact (hard) margin of the best iterate seen, with its embeddings.
    """
    check_int("d", d, 1)
    s = 2 * A - 1
    if d == 1:  # embeddings are +-1: margin 1 if s is a rank-one sign pattern u v^T, else -1
        v, u = s[0].copy(), s[:, 0] * s[0, 0]
        ok = bool(np.all(np.outer(u, v) == s))
        return (1.0 if ok else -1.0), u[:, None], v[:, None]
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] = (-math.inf, np.empty(0), np.empty(0))
    temps = np.geomspace(5.0, 200.0, steps)
    rates = lr * np.geomspace(1.0, 0.05, steps)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for _ in range(restarts):
        X = [rng.standard_normal((A.shape[0], d)), rng.standard_normal((A.shape[1], d))]
        X = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in X]
        mom = [np.zeros_like(x) for x in X]
        sec = [np.zeros_like(x) for x in X]
        for step in range(steps + 1):
            U, V = X
            signed = s * (U @ V.T)
            hard = float(signed.min())
            if hard > best[0]:
                best = (hard, U.copy(), V.copy())
            if step == steps:
                break
            z = -temps[step] * signed
            w = np.exp(z - z.max())
            w /= w.sum()
            dG = -s * w
            grads = [dG @ V, dG.T @ U]
            for i, g in enumerate(grads):
                mom[i] = b1 * mom[i] + (1 - b1) * g
                sec[i] = b2 * sec[i] + (1 - b2) * g * g
                mhat, vhat = mom[i] / (1 - b1 ** (step + 1)), sec[i] / (1 - b2 ** (step + 1))
                x = X[i] - rates[step] * mhat / (np.sqrt(vhat) + eps)
                X[i] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return best


@EXPERIMENTS.register("retrieval-margin")
class RetrievalMarginExperiment(Experiment):
    """Retrieval margins vs dimension: free-embedding margin optimisation for every-k-sparse
    relevance, the dimension reaching the high-dimensional margin vs k log(n/k)."""

    paper = "Is Dimensionality a Barrier for Retrieval Models?"
    claim = ("for relevance = every k-sparse subset of n documents, the best margin is Theta(k^-1/2) and "
             "dimension d = O(k log(n/k)) is necessary and sufficient to reach it.")

    def __init__(self, cases: tuple[tuple[int, int], ...] = ((8, 1), (16, 1), (32, 1), (64, 1), (8, 2), (16, 2),
                                                             (32, 2), (12, 3), (16, 3)),
                 fraction: float = 0.9, steps: int = 600, restarts: int = 3, seed: int = 0) -> None:
        self.cases = []
        for case in cases:
            if not (isinstance(case, (list, tuple)) and len(case) == 2):
                raise SparsecraftError(f"cases entries must be (n, k) pairs, got {case!r}")
            n, k = check_int("n", case[0], 2), check_int("k", case[1], 1)
            if k >= n or math.comb(n, k) > 5000:
                raise SparsecraftError(f"case (n={n}, k={k}) needs 1 <= k < n and C(n, k) <= 5000 queries")
            self.cases.append((n, k))
        self.fraction = check_float("fraction", fraction, 0.0, 1.0, open_low=True)
        self.steps, self.restarts = check_int("steps", steps, 10), check_int("restarts", restarts, 1)
        self.seed = check_int("seed", seed, 0)

    def run(self, progress: bool = False) -> LabResult:
        rows, data = [], []
        for n, k in self.cases:
            A = ksparse_relevance(n, k)
            U, V = symmetric_embeddings(A)
            m_con = margin(U, V, A)
            m_inf = max(m_con, optimise_margin(A, n + 1, steps=self.steps, restarts=self.restarts, seed=self.seed)[0])
            curve, d_hit = {}, None
            for d in range(1, n + 2):
                m_d = optimise_margin(A, d, steps=self.steps, restarts=self.restarts, seed=self.seed)[0]
                curve[d] = m_d
                if m_d >= self.fraction * m_inf:
                    d_hit = d
                    break
            bound = k * math.log(n / k)
            data.append({"n": n, "k": k, "m_construction": m_con, "m_inf": m_inf, "d_hit": d_hit,
                         "k_log_n_over_k": bound, "curve": curve})
            quarter, half = max(1, n // 4), max(1, n // 2)
            at = {dd: curve[dd] if dd in curve else
                  optimise_margin(A, dd, steps=self.steps, restarts=self.restarts, seed=self.seed)[0]
                  for dd in (quarter, half)}
            rows.append([str(n), str(k), str(A.shape[0]), fmt(m_con, 3), fmt(m_inf, 3), fmt(m_inf * math.sqrt(k)),
                         f"{at[quarter]:.3f} (d={quarter})", f"{at[half]:.3f} (d={half})", str(d_hit),
                         fmt(d_hit / n) if d_hit else "-", fmt(bound), fmt(d_hit / bound) if d_hit else "-"])
        pct = f"{self.fraction:.0%}"
        table = LabTable(f"Margin of free embeddings (Adam on a soft-min, {self.restarts} starts x {self.steps} "
                         f"steps) for every k-subset of n documents; d_{pct} = smallest d whose margin reaches "
                         f"{pct} of the d = n+1 optimum",
                         ["n", "k", "queries", "construction 1/(1+2 sqrt k)", "m(n+1) optimised", "m * sqrt(k)",
                          "m at d = n/4", "m at d = n/2", f"d_{pct}", f"d_{pct} / n", "k log(n/k)",
                          f"d_{pct} / k log(n/k)"], rows)
        ratios = [r["d_hit"] / r["k_log_n_over_k"] for r in data if r["d_hit"]] or [float("nan")]
        per_n = [r["d_hit"] / r["n"] for r in data if r["d_hit"]] or [float("nan")]
        scaled = [r["m_inf"] * math.sqrt(r["k"]) for r in data]
        finding = (f"the optimised high-dimensional margin times sqrt(k) stays in [{min(scaled):.2f}, "
                   f"{max(scaled):.2f}] (Theta(k^-1/2)); the dimension the optimiser needs for {pct} of it "
                   f"is {min(ratios):.2f}-{max(ratios):.2f} x k log(n/k) and {min(per_n):.2f}-{max(per_n):.2f} "
                   "x n over these cases.")
        return LabResult(self.name, self.claim, [table], finding, {"cases": data})
