"""Broken Neural Scaling Law (Caballero et al. 2023, arXiv:2210.14891).

    y = a + b x^(-c0) prod_{i=1..n} (1 + (x / d_i)^(1 / f_i))^(-c_i f_i)

A smoothly broken power law: slope ``-c0`` before the first break, each break ``i`` at
``x ~ d_i`` adds ``-c_i`` to the log-log slope over a transition whose sharpness is ``f_i``
(small ``f`` = sharp). The paper fits it by minimising the mean of
``(log(yhat + 1) - log(y + 1))^2`` -- that is :attr:`default_loss` ``"log1p"`` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling.laws.base import LAWS, Law, product, safe_power


@LAWS.register("bnsl")
class BNSL(Law):
    """Broken neural scaling law with n smooth breaks (Caballero et al. 2023)."""

    inputs = ("x",)
    default_loss = "log1p"

    def __init__(self, breaks: int = 1) -> None:
        if int(breaks) != breaks or not 0 <= int(breaks) <= 4:
            raise SparsecraftError(f"bnsl breaks must be an integer in 0..4, got {breaks}")
        self.breaks = int(breaks)

    def options(self) -> dict[str, Any]:
        return {"breaks": self.breaks}

    def param_names(self) -> list[str]:
        names = ["a", "b", "c0"]
        for i in range(1, self.breaks + 1):
            names += [f"c{i}", f"d{i}", f"f{i}"]
        return names

    def positive(self) -> list[bool]:
        return [False, True, False] + [False, True, True] * self.breaks

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = [0.0, 1e-300, -20.0] + [-50.0, 1e-300, 1e-4] * self.breaks
        hi = [np.inf, np.inf, 20.0] + [50.0, np.inf, 1e3] * self.breaks
        return np.array(lo), np.array(hi)

    def canonical(self, params: np.ndarray) -> np.ndarray:
        """Breaks sorted by position d_i (the form is symmetric under permuting breaks)."""
        p = np.asarray(params, dtype=float).copy()
        if self.breaks > 1:
            blocks = p[3:].reshape(self.breaks, 3)
            p[3:] = blocks[np.argsort(blocks[:, 1], kind="stable")].ravel()
        return p

    def predict(self, params: Sequence[Any], x: np.ndarray) -> np.ndarray:
        (x,) = self.columns(x)
        a, b, c0 = params[0], params[1], params[2]
        y = b * safe_power(x, -c0)
        for i in range(self.breaks):
            c, d, f = params[3 + 3 * i : 6 + 3 * i]
            inner = 1.0 + safe_power(x / d, 1.0 / f)
            y = y * safe_power(inner, -c * f)
        return a + y

    def grid(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        (x,) = self.columns(x)
        xmin, xmax = float(np.min(x)), float(np.max(x))
        ymin, ymax = float(np.min(y)), float(np.max(y))
        # reparametrised: a = u*min(y); b from the height m*(max(y) - a) at the smallest x;
        # breaks d_i log-spaced over (a little beyond) the data range; sharpness f log-spaced
        axes = [
            np.linspace(0.0, 0.95, 8),  # u
            np.array([0.5, 0.8, 1.0, 1.25, 2.0]),  # m
            np.array([-0.2, 0.0, 0.05, 0.15, 0.3, 0.6, 1.0]),  # c0
        ]
        for _ in range(self.breaks):
            axes += [
                np.array([-0.5, 0.1, 0.3, 1.0, 3.0, 8.0]),  # c_i
                np.geomspace(xmin / 1.5, xmax * 1.5, 9),  # d_i
                np.array([0.03, 0.1, 0.3, 1.0, 3.0]),  # f_i
            ]
        g = product(*axes) if self.breaks <= 1 else _sampled_product(axes, 120_000)
        a = g[:, 0] * ymin
        b = g[:, 1] * np.maximum(ymax - a, 1e-12 * ymax) * safe_power(xmin, g[:, 2])
        return np.concatenate([a[:, None], b[:, None], g[:, 2:]], axis=1)


def _sampled_product(axes: list[np.ndarray], limit: int, seed: int = 0) -> np.ndarray:
    """The full product grid if it has at most ``limit`` points, else ``limit`` random points
    of it (fixed seed, so fits are reproducible)."""
    sizes = [len(a) for a in axes]
    total = int(np.prod(sizes, dtype=float))
    if total <= limit:
        return product(*axes)
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, n, size=limit) for n in sizes]
    return np.stack([a[i] for a, i in zip(axes, idx)], axis=1)
