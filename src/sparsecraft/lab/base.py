"""Registry and result types of the lab experiments (:mod:`sparsecraft.lab`).

An experiment is one registered class per module; its constructor takes the knobs (validated,
a bad value is a one-line :class:`~sparsecraft.errors.SparsecraftError`) and :meth:`Experiment.run`
returns a :class:`LabResult`: tables of numbers plus the raw values tests can check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from sparsecraft.errors import SparsecraftError
from sparsecraft.registry import Registry

EXPERIMENTS: Registry[type[Experiment]] = Registry("experiment", package="sparsecraft.lab",
                                                   title="lab experiments")


@dataclass
class LabTable:
    """One table of an experiment's result: a caption, column names and formatted rows."""

    caption: str
    columns: list[str]
    rows: list[list[str]]

    def to_markdown(self) -> str:
        lines = [self.caption, "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


@dataclass
class LabResult:
    """What :meth:`Experiment.run` returns: the tables, a one-paragraph finding and raw data."""

    name: str
    claim: str
    tables: list[LabTable]
    finding: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self) -> str:
        parts = [f"Claim (paper): {self.claim}", ""]
        for t in self.tables:
            parts += [t.to_markdown(), ""]
        parts.append(f"What happened here: {self.finding}")
        return "\n".join(parts)


class Experiment:
    """Base class: ``paper`` names the paper of /work/shared/papers.txt, ``claim`` its claim."""

    paper: ClassVar[str] = ""
    claim: ClassVar[str] = ""

    @property
    def name(self) -> str:
        return type(self).registry_name  # type: ignore[attr-defined]

    def run(self, progress: bool = False) -> LabResult:
        raise NotImplementedError


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` or a one-line error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise SparsecraftError(f"{name} must be an integer {allowed}, got {value!r}")
    return value


def check_float(name: str, value: Any, low: float, high: float, *, open_low: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` with ``open_low``) or a one-line error."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > low if open_low else v >= low) and v <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise SparsecraftError(f"{name} must be a number in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def fmt(x: float, digits: int = 2) -> str:
    """A number for a results table."""
    return f"{x:.{digits}f}"
