"""A fitted scaling law: parameters, errors, uncertainty; saved as (and reloaded from) JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsecraft import atomic
from sparsecraft.errors import SparsecraftError
from sparsecraft.scaling.laws import Law, make_law

FORMAT = "sparsecraft-scaling-fit/1"


def rmsle(pred: np.ndarray, y: np.ndarray) -> float | None:
    """Root mean squared log error sqrt(mean((log yhat - log y)^2)); inf if any yhat <= 0,
    None for no points (the BNSL paper's error measure)."""
    pred, y = np.asarray(pred, dtype=float), np.asarray(y, dtype=float)
    if pred.size == 0:
        return None
    if np.any(~(pred > 0)) or np.any(~(y > 0)):
        return float("inf")
    return float(np.sqrt(np.mean((np.log(pred) - np.log(y)) ** 2)))


@dataclass
class FitResult:
    """The outcome of :func:`sparsecraft.scaling.fit` (or of :func:`load_fit`)."""

    law: Law
    params: np.ndarray
    loss: str
    x: np.ndarray
    y: np.ndarray
    fit_mask: np.ndarray
    objective: float
    x_names: list[str] = field(default_factory=list)
    y_name: str = "y"
    fit_time_s: float = 0.0
    boot_params: np.ndarray | None = None
    level: float = 0.9

    # predictions & errors --------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(self.law.predict(list(self.params), self.law.check_x(x)), dtype=float)

    @property
    def param_dict(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.law.param_names(), self.params)}

    @property
    def rmsle_fit(self) -> float | None:
        m = self.fit_mask
        return rmsle(self.predict(self.x[m]), self.y[m])

    @property
    def rmsle_holdout(self) -> float | None:
        m = ~self.fit_mask
        return rmsle(self.predict(self.x[m]), self.y[m]) if m.any() else None

    def intervals(self) -> dict[str, list[float]] | None:
        """Percentile bootstrap intervals at :attr:`level` per parameter (None without bootstrap)."""
        if self.boot_params is None or len(self.boot_params) < 2:
            return None
        q = [(1 - self.level) / 2 * 100, (1 + self.level) / 2 * 100]
        lo, hi = np.percentile(self.boot_params, q, axis=0)
        return {n: [float(a), float(b)] for n, a, b in zip(self.law.param_names(), lo, hi)}

    def band(self, x: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """(lower, upper) prediction band at ``x`` from the bootstrap refits."""
        if self.boot_params is None or len(self.boot_params) < 2:
            return None
        xx = self.law.check_x(x)
        preds = np.stack([self.law.predict(list(p), xx) for p in self.boot_params])
        q = [(1 - self.level) / 2 * 100, (1 + self.level) / 2 * 100]
        lo, hi = np.nanpercentile(preds, q, axis=0)
        return lo, hi

    # serialisation -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Plain numbers for printing / ``--json``."""
        return {
            "law": self.law.name,
            "options": self.law.options(),
            "inputs": self.x_names or list(self.law.inputs),
            "target": self.y_name,
            "loss": self.loss,
            "params": self.param_dict,
            "intervals": self.intervals(),
            "level": self.level,
            "n_bootstrap": 0 if self.boot_params is None else int(len(self.boot_params)),
            "n_fit": int(self.fit_mask.sum()),
            "n_holdout": int((~self.fit_mask).sum()),
            "objective": float(self.objective),
            "rmsle_fit": self.rmsle_fit,
            "rmsle_holdout": self.rmsle_holdout,
            "fit_time_s": round(float(self.fit_time_s), 4),
        }

    def to_dict(self) -> dict[str, Any]:
        d = {"format": FORMAT, **self.summary()}
        d["data"] = {
            "x": self.x.tolist(),
            "y": self.y.tolist(),
            "fit": self.fit_mask.astype(bool).tolist(),
        }
        d["bootstrap_params"] = None if self.boot_params is None else self.boot_params.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitResult:
        if d.get("format") != FORMAT:
            raise SparsecraftError(f"not a sparsecraft fit file (format {d.get('format')!r}, expected {FORMAT!r})")
        law = make_law(d["law"], **d.get("options", {}))
        params = np.array([d["params"][n] for n in law.param_names()], dtype=float)
        boot = d.get("bootstrap_params")
        return cls(
            law=law,
            params=params,
            loss=d["loss"],
            x=np.asarray(d["data"]["x"], dtype=float),
            y=np.asarray(d["data"]["y"], dtype=float),
            fit_mask=np.asarray(d["data"]["fit"], dtype=bool),
            objective=float(d["objective"]),
            x_names=list(d.get("inputs", [])),
            y_name=d.get("target", "y"),
            fit_time_s=float(d.get("fit_time_s", 0.0)),
            boot_params=None if boot is None else np.asarray(boot, dtype=float),
            level=float(d.get("level", 0.9)),
        )

    def save(self, path: str | Path) -> Path:
        """Write the fit as JSON atomically (:mod:`sparsecraft.atomic`)."""
        return atomic.write_text(path, json.dumps(self.to_dict(), indent=2))


def load_fit(path: str | Path) -> FitResult:
    """Reload a fit written by :meth:`FitResult.save` (or ``sparsecraft fit``)."""
    path = Path(path)
    if not path.is_file():
        raise SparsecraftError(f"fit file {str(path)!r} does not exist")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SparsecraftError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise SparsecraftError(f"{path}: a fit file must be a JSON object")
    return FitResult.from_dict(d)
