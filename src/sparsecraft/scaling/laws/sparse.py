"""Sparse scaling law L(S, N, D) of Frantar et al. 2023, "Scaling Laws for Sparsely-Connected
Foundation Models" (arXiv:2309.08520), multiplicative form:

    L(S, N, D) = (a_S (1 - S)^b_S + c_S) * (1 / N)^b_N + (a_D / D)^b_D + c

``S`` is the sparsity of the pruned layers, ``N`` the number of non-zero parameters and ``D``
the number of training tokens (or samples). The sparsity term multiplies the parameter term:
at a fixed non-zero count, a sparser (bigger, pruned) model has a smaller coefficient, and the
benefit saturates at ``c_S`` as S -> 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling.laws.base import LAWS, Law, geo_mean, product, safe_power


@LAWS.register("sparse")
class SparseLaw(Law):
    """L(S,N,D) = (a_S (1-S)^b_S + c_S) (1/N)^b_N + (a_D/D)^b_D + c (Frantar et al. 2023)."""

    inputs = ("S", "N", "D")

    def param_names(self) -> list[str]:
        return ["a_S", "b_S", "c_S", "b_N", "a_D", "b_D", "c"]

    def positive(self) -> list[bool]:
        return [True, True, True, True, True, True, False]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([1e-300, 1e-3, 1e-300, 1e-4, 1e-300, 1e-4, 0.0])
        hi = np.array([np.inf, 10.0, np.inf, 5.0, np.inf, 5.0, np.inf])
        return lo, hi

    def validate_inputs(self, x: np.ndarray) -> None:
        s, n, d = self.columns(x)
        bad = np.flatnonzero(~((s >= 0) & (s < 1)))
        if bad.size:
            raise SparsecraftError(f"law 'sparse' needs 0 <= S < 1; rows {bad[:5].tolist()} have {s[bad[:5]].tolist()}")
        for name, col in (("N", n), ("D", d)):
            bad = np.flatnonzero(~(col > 0))
            if bad.size:
                raise SparsecraftError(f"law 'sparse' needs {name} > 0; rows {bad[:5].tolist()}")

    def predict(self, params: Sequence[Any], x: np.ndarray) -> np.ndarray:
        a_s, b_s, c_s, b_n, a_d, b_d, c = params
        s, n, d = self.columns(x)
        coef = a_s * safe_power(np.clip(1.0 - s, 0.0, None), b_s) + c_s
        return coef * safe_power(n, -b_n) + safe_power(a_d / d, b_d) + c

    def grid(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        _, n, d = self.columns(x)
        nref, dref, ymin, ymed = geo_mean(n), geo_mean(d), float(np.min(y)), float(np.median(y))
        g = product(
            np.linspace(0.0, 0.95, 6),  # c = u * min(y)
            np.geomspace(0.05, 1.2, 6),  # b_N
            np.array([0.1, 0.4, 1.0, 3.0]),  # height of the N term at (S=0, nref), x rest
            np.array([0.2, 0.5, 0.8]),  # share of a_S in the S=0 coefficient
            np.array([0.25, 0.5, 1.0, 2.0]),  # b_S
            np.geomspace(0.05, 1.2, 6),  # b_D
            np.array([0.1, 0.4, 1.0, 3.0]),  # height of the D term at dref, x rest
        )
        c = g[:, 0] * ymin
        rest = np.maximum(ymed - c, 1e-12 * ymed)
        k0 = g[:, 2] * rest * safe_power(nref, g[:, 1])
        a_s, c_s = k0 * g[:, 3], k0 * (1.0 - g[:, 3])
        a_d = dref * safe_power(g[:, 6] * rest, 1.0 / g[:, 5])
        return np.stack([a_s, g[:, 4], c_s, g[:, 1], a_d, g[:, 5], c], axis=1)
