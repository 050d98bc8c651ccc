"""The prune section shared by recipes: the arguments of :func:`sparsecraft.prune` written down
(method, criterion, pattern, distribution, targets / ignore, overrides)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from sparsecraft.criteria import CRITERIA
from sparsecraft.distributions import DISTRIBUTIONS
from sparsecraft.errors import SparsecraftError
from sparsecraft.jobs.recipe import Strict, check_regex, regex_list_validator
from sparsecraft.patterns import parse_pattern


def _check_named(registry, value: Any) -> Any:  # noqa: ANN001
    name = value.get("type") if isinstance(value, dict) else value
    if not isinstance(name, str) or name.lower() not in registry:
        raise ValueError(f"unknown {registry.kind} {name!r}; allowed: {', '.join(registry.names())}")
    return value


def check_pattern_spec(v: Any) -> Any:
    """A pydantic-friendly check that ``v`` is a pattern spec :func:`parse_pattern` accepts."""
    try:
        parse_pattern(v)
    except SparsecraftError as e:
        raise ValueError(str(e)) from None
    return v


class OverrideConfig(Strict):
    match: str  #: regex on the layer name
    pattern: str | dict | None = None
    sparsity: float | None = Field(None, ge=0.0, le=1.0)

    @field_validator("match")
    @classmethod
    def _match(cls, v: str) -> str:
        return check_regex(v)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: Any) -> Any:
        return v if v is None else check_pattern_spec(v)


class PruneConfig(Strict):
    """How to prune: maps one-to-one to ``sparsecraft.prune`` keyword arguments."""

    method: str | None = None
    criterion: str | dict | None = None
    pattern: str | dict = "unstructured"
    distribution: str | dict = "uniform"
    targets: list[str] = []
    ignore: list[str] = []
    overrides: list[OverrideConfig] = []
    skip_unfit: bool = False

    @field_validator("method")
    @classmethod
    def _method(cls, v: Any) -> Any:
        from sparsecraft.oneshot.base import ONESHOT

        return v if v is None else _check_named(ONESHOT, v)

    _layer_rules = regex_list_validator("targets", "ignore")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: Any) -> Any:
        return check_pattern_spec(v)

    @field_validator("criterion")
    @classmethod
    def _criterion(cls, v: Any) -> Any:
        return v if v is None else _check_named(CRITERIA, v)

    @field_validator("distribution")
    @classmethod
    def _distribution(cls, v: Any) -> Any:
        return _check_named(DISTRIBUTIONS, v)

    def prune_kwargs(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "criterion": self.criterion,
            "distribution": self.distribution,
            "method": self.method,
            "targets": self.targets or None,
            "ignore": self.ignore,
            "overrides": [o.model_dump() for o in self.overrides],
            "skip_unfit": self.skip_unfit,
        }
