"""Power law with an irreducible offset: ``y = E + A * x^(-alpha)``.

The classic single-axis scaling law (Hestness et al. 2017; Kaplan et al. 2020 without the
offset). With ``E = 0`` it is a straight line in log-log space; ``alpha < 0`` gives a rising
curve (e.g. accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sparsecraft.scaling.laws.base import LAWS, Law, geo_mean, product, safe_power


@LAWS.register("power")
class PowerLaw(Law):
    """y = E + A x^-alpha (power law with offset)."""

    inputs = ("x",)

    def param_names(self) -> list[str]:
        return ["E", "A", "alpha"]

    def positive(self) -> list[bool]:
        return [False, True, False]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([0.0, 1e-300, -10.0]), np.array([np.inf, np.inf, 10.0])

    def predict(self, params: Sequence[Any], x: np.ndarray) -> np.ndarray:
        E, A, alpha = params
        (x,) = self.columns(x)
        return E + A * safe_power(x, -alpha)

    def grid(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        (x,) = self.columns(x)
        xref, ymin, ymed = geo_mean(x), float(np.min(y)), float(np.median(y))
        # reparametrised: E = u*min(y); A from the curve's height m*(median - E) at xref
        u = np.linspace(0.0, 0.95, 12)
        alpha = np.concatenate([-np.geomspace(0.02, 1.5, 6), np.geomspace(0.02, 3.0, 14)])
        m = np.geomspace(0.05, 20.0, 10)
        g = product(u, alpha, m)
        E = g[:, 0] * ymin
        A = g[:, 2] * np.maximum(ymed - E, 1e-12 * ymed) * safe_power(xref, g[:, 1])
        return np.stack([E, A, g[:, 1]], axis=1)
