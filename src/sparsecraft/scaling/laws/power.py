"""Power law with an irreducible offset: ``y = E + A * x^(-alpha)``.

The classic single-axis scaling law (Hestness et al. 2017; Kaplan et al. 2020 without the
offset). With ``E = 0`` it is a straight line in log-log space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sparsecraft.scaling.laws.base import LAWS, Law, log_grid, safe_power


@LAWS.register("power")
class PowerLaw(Law):
    """y = E + A x^-alpha (power law with offset)."""

    inputs = ("x",)

    def param_names(self) -> list[str]:
        return ["E", "A", "alpha"]

    def positive(self) -> list[bool]:
        return [False, True, False]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([0.0, 1e-12, -10.0]), np.array([np.inf, 1e30, 10.0])

    def predict(self, params: Sequence[Any], x: np.ndarray) -> np.ndarray:
        E, A, alpha = params
        (x,) = self.columns(x)
        return E + A * safe_power(x, -alpha)

    def grid(self, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
        (x,) = self.columns(x)
        ymin = float(np.min(y))
        E = ymin * np.linspace(0.0, 0.95, 12)
        alpha = np.concatenate([np.linspace(0.02, 1.5, 14), [2.0, 3.0]])
        # A such that A x_ref^-alpha spans the data range, for the range of exponents
        xref = float(np.exp(np.mean(np.log(x))))
        span = float(np.max(y))
        A = log_grid(span * 1e-3 * min(1.0, xref**0.02), span * 1e3 * max(1.0, xref**3.0), 24)
        return [E, A, alpha]
