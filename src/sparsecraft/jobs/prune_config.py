"""The sparsity plan section shared by recipes: the arguments of :func:`sparsecraft.prune`
written down (pattern, criterion, distribution, include / keep-dense rules, overrides)."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from sparsecraft.criteria import CRITERIA
from sparsecraft.distributions import DISTRIBUTIONS
from sparsecraft.errors import SparsecraftError
from sparsecraft.jobs.recipe import Strict
from sparsecraft.patterns import parse_pattern


def _check_named(registry, value: Any) -> Any:  # noqa: ANN001
    name = value.get("type") if isinstance(value, dict) else value
    if not isinstance(name, str) or name.lower() not in registry:
        raise ValueError(f"unknown {registry.kind} {name!r}; allowed: {', '.join(registry.names())}")
    return value


class OverrideConfig(Strict):
    match: str
    pattern: str | dict | None = None
    sparsity: float | None = None


class PruneConfig(Strict):
    """How to prune: maps one-to-one to ``sparsecraft.prune`` keyword arguments."""

    pattern: str | dict = "unstructured"
    criterion: str | dict = "magnitude"
    distribution: str | dict = "uniform"
    include: list[str] = []
    keep_dense: list[str] = []
    overrides: list[OverrideConfig] = []
    skip_unfit: bool = False

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: Any) -> Any:
        try:
            parse_pattern(v)
        except SparsecraftError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("criterion")
    @classmethod
    def _criterion(cls, v: Any) -> Any:
        return _check_named(CRITERIA, v)

    @field_validator("distribution")
    @classmethod
    def _distribution(cls, v: Any) -> Any:
        return _check_named(DISTRIBUTIONS, v)

    def prune_kwargs(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "criterion": self.criterion,
            "distribution": self.distribution,
            "include": self.include or None,
            "keep_dense": self.keep_dense,
            "overrides": [o.model_dump() for o in self.overrides],
            "skip_unfit": self.skip_unfit,
        }
