"""Base class and registry of scaling laws.

A law is a parametric curve ``y = f(x; theta)``. Each law declares its parameter names, which
parameters are strictly positive (those are searched and fitted in log space), bounds, a
vectorised ``predict`` and a data-aware coarse grid used by :func:`sparsecraft.scaling.fit`
before local least squares. Laws with several inputs (e.g. ``L(N, D)``) take ``x`` as an
``(n, k)`` array whose columns follow :attr:`Law.inputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from sparsecraft.errors import SparsecraftError
from sparsecraft.registry import Registry

LAWS: Registry[type[Law]] = Registry("law", package="sparsecraft.scaling.laws", title="scaling laws")

#: loss spaces the fitter knows: residual = g(yhat) - g(y)
LOSS_SPACES = ("log", "log1p", "linear")


class Law:
    """A scaling law: ``predict(params, x)`` with named, bounded parameters."""

    #: names of the input columns (one per column of ``x``)
    inputs: ClassVar[tuple[str, ...]] = ("x",)
    #: residual space used when the user asks for ``loss="auto"``
    default_loss: ClassVar[str] = "log"

    def options(self) -> dict[str, Any]:
        """Constructor arguments, stored in fitted JSON so the law can be rebuilt."""
        return {}

    @property
    def name(self) -> str:
        return type(self).registry_name  # type: ignore[attr-defined]

    def param_names(self) -> list[str]:
        raise NotImplementedError

    def positive(self) -> list[bool]:
        """True for parameters that must be > 0 (fitted as log of the value)."""
        raise NotImplementedError

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) bounds in natural space; positive parameters need lower > 0."""
        raise NotImplementedError

    def predict(self, params: Sequence[Any], x: np.ndarray) -> np.ndarray:
        """y for inputs ``x``. Each parameter may be a scalar or a ``(G, 1)`` column (grid)."""
        raise NotImplementedError

    def grid(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Coarse-search candidates, shape (G, n_params), natural space. Laws build them as a
        product grid in a reparametrised space (offset as a fraction of min y, scale as the
        curve's value at the geometric-mean input, breaks inside the data range) so the grid
        adapts to the data's units."""
        raise NotImplementedError

    def canonical(self, params: np.ndarray) -> np.ndarray:
        """A canonical ordering of equivalent parameter vectors (identity by default)."""
        return np.asarray(params, dtype=float)

    def validate_inputs(self, x: np.ndarray) -> None:
        """Raise a :class:`SparsecraftError` if an input value is outside the law's domain
        (default: every input must be > 0, as in any power law)."""
        for name, col in zip(self.inputs, self.columns(x)):
            bad = np.flatnonzero(~(col > 0))
            if bad.size:
                raise SparsecraftError(
                    f"law {self.name!r} needs {name} > 0; rows {bad[:5].tolist()} have {col[bad[:5]].tolist()}"
                )

    # helpers -------------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return len(self.param_names())

    def check_x(self, x: np.ndarray) -> np.ndarray:
        """``x`` as float array of shape (n,) for one input or (n, k) for k inputs."""
        x = np.asarray(x, dtype=float)
        k = len(self.inputs)
        if k == 1:
            if x.ndim == 2 and x.shape[1] == 1:
                x = x[:, 0]
            if x.ndim != 1:
                raise SparsecraftError(f"law {self.name!r} takes one input column, got shape {x.shape}")
        elif x.ndim != 2 or x.shape[1] != k:
            raise SparsecraftError(
                f"law {self.name!r} takes {k} input columns ({', '.join(self.inputs)}), got shape {x.shape}"
            )
        return x

    def columns(self, x: np.ndarray) -> list[np.ndarray]:
        x = self.check_x(x)
        return [x] if x.ndim == 1 else [x[:, i] for i in range(x.shape[1])]

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def make_law(name: str | Law, **options: Any) -> Law:
    """A law instance from its registered name and options (e.g. ``breaks=1`` for BNSL)."""
    if isinstance(name, Law):
        return name
    cls = LAWS.get(name)
    try:
        return cls(**options)
    except TypeError as e:
        raise SparsecraftError(f"bad options for law {name!r}: {e}") from None


def log_grid(lo: float, hi: float, n: int) -> np.ndarray:
    """``n`` log-spaced values between ``lo`` and ``hi`` (both > 0)."""
    return np.geomspace(max(lo, 1e-300), max(hi, lo * 1.0001), n)


def product(*axes: Any) -> np.ndarray:
    """All combinations of the given 1-D axes, shape (G, len(axes))."""
    mesh = np.meshgrid(*[np.asarray(a, dtype=float) for a in axes], indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def geo_mean(v: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(v, dtype=float)))))


def safe_power(base: np.ndarray, exponent: Any) -> np.ndarray:
    """``base ** exponent`` without warnings; base must be >= 0."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return np.power(base, exponent)
