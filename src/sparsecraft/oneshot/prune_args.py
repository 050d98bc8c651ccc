"""The checked arguments of :func:`sparsecraft.prune`: every argument is validated (one-line
:class:`~sparsecraft.errors.SparsecraftError`) before anything is touched, by the in-memory
engine and the onloading engine (:mod:`sparsecraft.oneshot.onloaded`) alike."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sparsecraft.criteria import CRITERIA, Criterion, make_criterion
from sparsecraft.distributions import Distribution, make_distribution
from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.base import ONESHOT, OneShotPruner, make_pruner
from sparsecraft.patterns import Pattern, parse_pattern
from sparsecraft.pruning import Override, parse_overrides
from sparsecraft.targets import check_regexes


def check_sparsity(sparsity: Any) -> float:
    """``sparsity`` as a float in [0, 1], or a one-line error naming the value."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0.0 <= float(sparsity) <= 1.0:
        raise SparsecraftError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    return float(sparsity)


@dataclass
class PruneArgs:
    """The checked arguments of :func:`prune` (shared with the onloading engine)."""

    sparsity: float
    pruner: OneShotPruner | None
    crit: Criterion
    dist: Distribution
    pat: Pattern
    targets: list[str] | None
    ignore: list[str]
    overrides: list[Override]

    @property
    def blockwise(self) -> bool:
        """True when activations are needed (the block-by-block engine)."""
        return self.pruner is not None or self.crit.needs_activations or self.dist.needs_activations


def parse_args(sparsity: Any, method: str | None, criterion: Any, pattern: Any, distribution: Any,
               targets: Sequence[str] | None, ignore: Sequence[str] | None, overrides: Iterable[Any] | None,
               batch_size: Any, options: dict[str, Any]) -> PruneArgs:
    """Check every argument of :func:`prune` (one-line errors) before anything is touched."""
    sparsity = check_sparsity(sparsity)
    if method is not None and criterion is not None:
        raise SparsecraftError(
            f"method {method!r} chooses its own weights to prune; leave criterion unset (got {criterion!r})"
        )
    if isinstance(method, str) and method.lower() in CRITERIA:
        raise SparsecraftError(
            f"{method!r} is a criterion (which weights go), not a method: use criterion={method!r} "
            f"(methods: {', '.join(ONESHOT.names())})"
        )
    crit = make_criterion("magnitude" if criterion is None else criterion)
    dist = make_distribution(distribution)
    pat = parse_pattern(pattern)
    targets = check_regexes(targets, "targets") or None
    ignore = check_regexes(ignore, "ignore")
    ovs = parse_overrides(overrides)
    for ov in ovs:
        check_regexes([ov.match], "overrides.match")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SparsecraftError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    pruner = make_pruner(method, **options) if method is not None else None
    if pruner is None and options:
        raise SparsecraftError(f"unknown option(s) {', '.join(sorted(options))} (options belong to a method)")
    return PruneArgs(sparsity, pruner, crit, dist, pat, targets, ignore, ovs)
