"""Kronecker-structured sparse Bayesian learning (KroSBL): AM- and SVD-based EM vs plain SBL.

Paper: "Bayesian Algorithms for Kronecker-structured Sparse Vector Recovery With Application to
IRS-MIMO Channel Estimation" (papers.txt). Measurements ``y = (A1 kron A2) x + noise`` with a
Kronecker-supported ``x`` (support = S1 x S2). Sparse Bayesian learning puts the prior
``x ~ N(0, diag(gamma))`` and runs EM on the hyperparameters:

* E-step (all variants), with ``Phi = A1 kron A2`` and noise variance ``sigma2``:
  ``C = sigma2 I + Phi Gamma Phi^T``, ``mu = Gamma Phi^T C^-1 y``,
  ``diag(Sigma) = gamma - gamma^2 diag(Phi^T C^-1 Phi)``; ``Q = mu^2 + diag(Sigma)``.
* M-step, plain SBL (Tipping 2001, Wipf & Rao 2004): ``gamma = Q``.
* M-step, Kronecker-structured hyperparameter ``gamma = gamma1 kron gamma2``: minimise
  ``sum_ij Q_ij / (gamma1_i gamma2_j) + n2 sum_i log gamma1_i + n1 sum_j log gamma2_j``
  (Q reshaped to n1 x n2).
  - AM (alternating minimisation, converges to a stationary point of the SBL cost):
    ``gamma1_i = mean_j Q_ij / gamma2_j`` then ``gamma2_j = mean_i Q_ij / gamma1_i``, repeated.
  - SVD: the unstructured minimiser is ``Q`` itself; project it on the Kronecker structure by its
    best rank-one approximation ``Q ~ s u v^T``, ``gamma1 = sqrt(s) |u|``, ``gamma2 = sqrt(s) |v|``.

The experiment compares NMSE vs SNR and EM iterations to convergence on synthetic Kronecker
channels (the noise variance is known to every method).
"""

from __future__ import annotations

import math
import time

import numpy as np

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab.base import EXPERIMENTS, Experiment, LabResult, LabTable, check_float, check_int, fmt

VARIANTS = ("sbl", "krosbl-am", "krosbl-svd")
_FLOOR = 1e-12


def e_step(Phi: np.ndarray, y: np.ndarray, gamma: np.ndarray, sigma2: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and marginal variances of x given gamma (Woodbury form, m x m solve)."""
    PG = Phi * gamma
    C = sigma2 * np.eye(Phi.shape[0]) + PG @ Phi.T
    Cinv_y = np.linalg.solve(C, y)
    Cinv_P = np.linalg.solve(C, Phi)
    mu = gamma * (Phi.T @ Cinv_y)
    var = gamma - gamma**2 * np.einsum("mi,mi->i", Phi, Cinv_P)
    return mu, np.maximum(var, 0.0)


def kron_cost(Q: np.ndarray, g1: np.ndarray, g2: np.ndarray) -> float:
    """The Kronecker M-step objective: sum Q_ij / (g1_i g2_j) + n2 sum log g1 + n1 sum log g2."""
    n1, n2 = Q.shape
    return float(np.sum(Q / np.outer(g1, g2)) + n2 * np.sum(np.log(g1)) + n1 * np.sum(np.log(g2)))


def m_step_am(Q: np.ndarray, g2: np.ndarray, sweeps: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Alternating minimisation of :func:`kron_cost`: each update is the exact minimiser of one
    factor given the other; starts from ``g2``."""
    g1 = np.empty(Q.shape[0])
    for _ in range(sweeps):
        g1 = np.maximum((Q / g2[None, :]).mean(axis=1), _FLOOR)
        g2 = np.maximum((Q / g1[:, None]).mean(axis=0), _FLOOR)
    return g1, g2


def m_step_svd(Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-one approximation of Q as gamma1 gamma2^T (factors made non-negative)."""
    u, s, vt = np.linalg.svd(Q)
    root = math.sqrt(s[0])
    return np.maximum(root * np.abs(u[:, 0]), _FLOOR), np.maximum(root * np.abs(vt[0]), _FLOOR)


def sbl(A1: np.ndarray, A2: np.ndarray, y: np.ndarray, sigma2: float, variant: str = "krosbl-svd", *,
        iters: int = 200, tol: float = 1e-4, am_sweeps: int = 10) -> tuple[np.ndarray, int]:
    """EM for ``y = (A1 kron A2) x + noise``; returns (posterior mean, iterations run). Stops when
    the relative change of gamma falls below ``tol``. ``am_sweeps``: AM sweeps per M-step."""
    if variant not in VARIANTS:
        raise SparsecraftError(f"unknown SBL variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    if sigma2 <= 0:
        raise SparsecraftError(f"sigma2 must be > 0, got {sigma2!r}")
    Phi = np.kron(A1, A2)
    n1, n2 = A1.shape[1], A2.shape[1]
    g1, g2 = np.ones(n1), np.ones(n2)
    gamma = np.ones(n1 * n2)
    mu = np.zeros(n1 * n2)
    for it in range(1, iters + 1):
        mu, var = e_step(Phi, y, gamma, sigma2)
        Q = mu**2 + var
        if variant == "sbl":
            new = np.maximum(Q, _FLOOR)
        else:
            Qm = Q.reshape(n1, n2)
            g1, g2 = m_step_am(Qm, g2, am_sweeps) if variant == "krosbl-am" else m_step_svd(Qm)
            new = np.kron(g1, g2)
        change = np.linalg.norm(new - gamma) / np.linalg.norm(gamma)
        gamma = new
        if change < tol:
            return mu, it
    return mu, iters


def kronecker_problem(rng: np.random.Generator, m1: int, n1: int, m2: int, n2: int, s1: int, s2: int,
                      snr_db: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Gaussian dictionaries (unit-norm columns), x with support S1 x S2 and N(0, 1) values, noise
    at the given SNR (signal power / noise power of y). Returns A1, A2, x, y, noise variance."""
    A1 = rng.standard_normal((m1, n1))
    A2 = rng.standard_normal((m2, n2))
    A1 /= np.linalg.norm(A1, axis=0)
    A2 /= np.linalg.norm(A2, axis=0)
    X = np.zeros((n1, n2))
    X[np.ix_(rng.choice(n1, s1, replace=False), rng.choice(n2, s2, replace=False))] = rng.standard_normal((s1, s2))
    x = X.reshape(-1)
    clean = np.kron(A1, A2) @ x
    sigma2 = float(np.mean(clean**2)) / 10 ** (snr_db / 10)
    return A1, A2, x, clean + math.sqrt(sigma2) * rng.standard_normal(clean.shape), sigma2


def nmse_db(xh: np.ndarray, x: np.ndarray) -> float:
    return 10 * math.log10(float(np.sum((xh - x) ** 2) / np.sum(x**2)))


@EXPERIMENTS.register("kronecker-sbl")
class KroneckerSBLExperiment(Experiment):
    """Kronecker-structured SBL: AM- and SVD-based EM vs plain SBL on synthetic Kronecker-supported
    signals, NMSE vs SNR and iterations to convergence."""

    paper = "Bayesian Algorithms for Kronecker-structured Sparse Vector Recovery With Application to IRS-MIMO"
    claim = ("modelling the Kronecker structure of the support in the SBL hyperparameter improves recovery "
             "over plain SBL; the SVD-based method is more efficient and accurate than the AM-based one.")

    def __init__(self, m1: int = 8, n1: int = 16, m2: int = 8, n2: int = 16, s1: int = 3, s2: int = 3,
                 snrs: tuple[float, ...] = (0, 5, 10, 15, 20, 30), trials: int = 10, iters: int = 200,
                 seed: int = 0) -> None:
        self.m1, self.n1 = check_int("m1", m1, 1), check_int("n1", n1, 1)
        self.m2, self.n2 = check_int("m2", m2, 1), check_int("n2", n2, 1)
        self.s1, self.s2 = check_int("s1", s1, 1, self.n1), check_int("s2", s2, 1, self.n2)
        self.snrs = tuple(check_float("snrs entry", s, -30.0, 100.0) for s in snrs)
        self.trials, self.iters = check_int("trials", trials, 1), check_int("iters", iters, 1)
        self.seed = check_int("seed", seed, 0)

    def run(self, progress: bool = False) -> LabResult:
        rng = np.random.default_rng(self.seed)
        nmse = {v: [] for v in VARIANTS}
        its = {v: [] for v in VARIANTS}
        secs = {v: 0.0 for v in VARIANTS}
        for snr in self.snrs:
            per = {v: ([], []) for v in VARIANTS}
            for _ in range(self.trials):
                A1, A2, x, y, s2 = kronecker_problem(rng, self.m1, self.n1, self.m2, self.n2, self.s1, self.s2, snr)
                for v in VARIANTS:
                    t0 = time.perf_counter()
                    xh, it = sbl(A1, A2, y, s2, v, iters=self.iters)
                    secs[v] += time.perf_counter() - t0
                    per[v][0].append(10 ** (nmse_db(xh, x) / 10))
                    per[v][1].append(it)
            for v in VARIANTS:
                nmse[v].append(10 * math.log10(float(np.mean(per[v][0]))))
                its[v].append(float(np.mean(per[v][1])))
        rows = [[fmt(snr, 0)] + [fmt(nmse[v][i], 1) for v in VARIANTS] + [fmt(its[v][i], 0) for v in VARIANTS]
                for i, snr in enumerate(self.snrs)]
        calls = len(self.snrs) * self.trials
        rows.append(["time / recovery (ms)"] + [fmt(1000 * secs[v] / calls, 1) for v in VARIANTS] + ["", "", ""])
        m, n, k = self.m1 * self.m2, self.n1 * self.n2, self.s1 * self.s2
        table = LabTable(f"NMSE (dB, mean over {self.trials} trials) and EM iterations to convergence vs SNR: "
                         f"A1 {self.m1}x{self.n1} kron A2 {self.m2}x{self.n2} (m={m}, n={n}), support "
                         f"{self.s1}x{self.s2}={k}, noise variance known, at most {self.iters} iterations",
                         ["SNR (dB)"] + [f"NMSE {v}" for v in VARIANTS] + [f"iters {v}" for v in VARIANTS], rows)
        gain = [a - b for a, b in zip(nmse["sbl"], nmse["krosbl-svd"])]
        finding = (f"the Kronecker-structured hyperparameter lowers the NMSE by {min(gain):.1f} to {max(gain):.1f} dB "
                   f"(SVD variant vs plain SBL over SNR {self.snrs[0]:g}-{self.snrs[-1]:g} dB); AM vs SVD: "
                   f"{np.mean(nmse['krosbl-am']):.1f} vs {np.mean(nmse['krosbl-svd']):.1f} dB mean NMSE, "
                   f"{np.mean(its['krosbl-am']):.0f} vs {np.mean(its['krosbl-svd']):.0f} mean iterations, "
                   f"{1000 * secs['krosbl-am'] / calls:.1f} vs {1000 * secs['krosbl-svd'] / calls:.1f} ms per "
                   "recovery.")
        return LabResult(self.name, self.claim, [table], finding, {"nmse": nmse, "iters": its, "snrs": list(self.snrs)})
