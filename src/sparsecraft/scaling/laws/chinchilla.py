"""Chinchilla form ``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022) and the
average-parameter law of "The Journey Matters" (Jin et al. 2025), the same form with ``N``
replaced by ``Nbar``, the parameter count averaged over pre-training (see
:mod:`sparsecraft.scaling.average`), which puts sparse and dense pre-training on one curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sparsecraft.scaling.laws.base import LAWS, Law, geo_mean, product, safe_power


@LAWS.register("chinchilla")
class Chinchilla(Law):
    """L = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022)."""

    inputs = ("N", "D")

    def param_names(self) -> list[str]:
        return ["E", "A", "alpha", "B", "beta"]

    def positive(self) -> list[bool]:
        return [False, True, True, True, True]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([0.0, 1e-300, 1e-4, 1e-300, 1e-4])
        hi = np.array([np.inf, np.inf, 5.0, np.inf, 5.0])
        return lo, hi

    def predict(self, params: Sequence[Any], x: np.ndarray) -> np.ndarray:
        E, A, alpha, B, beta = params
        n, d = self.columns(x)
        return E + A * safe_power(n, -alpha) + B * safe_power(d, -beta)

    def grid(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        n, d = self.columns(x)
        nref, dref, ymin, ymed = geo_mean(n), geo_mean(d), float(np.min(y)), float(np.median(y))
        u = np.linspace(0.0, 0.95, 8)
        expo = np.geomspace(0.05, 1.5, 7)
        m = np.array([0.05, 0.2, 0.5, 1.0, 3.0])
        g = product(u, expo, m, expo, m)
        E = g[:, 0] * ymin
        rest = np.maximum(ymed - E, 1e-12 * ymed)
        A = g[:, 2] * rest * safe_power(nref, g[:, 1])
        B = g[:, 4] * rest * safe_power(dref, g[:, 3])
        return np.stack([E, A, g[:, 1], B, g[:, 3]], axis=1)


@LAWS.register("average-param")
class AverageParam(Chinchilla):
    """L = E + A/Nbar^alpha + B/D^beta, Nbar = parameters averaged over training (Jin et al. 2025)."""

    inputs = ("Nbar", "D")
