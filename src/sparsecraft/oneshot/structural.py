"""``sparsecraft.prune`` for methods that remove structures (SliceGPT, channels, heads, depth).

These methods do not mask weights: the model comes back with smaller shapes. The returned
:class:`~sparsecraft.report.SparsityReport` therefore lists the *new* shapes of the blocks'
layers (pattern ``dense``, true sparsity 0 -- there are no zeros to count), and
``report.info["structure"]`` says what changed: ``params_before``, ``params_after``,
``param_reduction`` (1 - after / before, tied weights counted once), and the method's own summary
(removed channels / heads per group, removed blocks with their scores, SliceGPT's sliced width and
per-block dimensions, whether plain ``from_pretrained`` can load the result). ``info["sparsity"]``
is the requested fraction in the method's own unit (hidden size sliced, channels, query heads or
blocks removed).
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from sparsecraft.distributions import make_distribution
from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.base import StructuralPruner
from sparsecraft.patterns import parse_pattern
from sparsecraft.report import SparsityReport, report
from sparsecraft.structure.api import count_params
from sparsecraft.targets import check_regexes


def prune_structural(model: nn.Module, sparsity: float, pruner: StructuralPruner, *, criterion: Any, pattern: Any,
                     distribution: Any, targets: Any, ignore: Any, calib: Any, loss_fn: Any, batch_size: int,
                     progress: bool, overrides: Any = None) -> SparsityReport:
    name = pruner.registry_name  # type: ignore[attr-defined]
    if parse_pattern(pattern).spec() != "unstructured":
        raise SparsecraftError(f"{name} removes whole structures; leave pattern unset (got {pattern!r})")
    if overrides:
        raise SparsecraftError(f"{name} takes no per-layer overrides; select layers with targets / ignore")
    if criterion is not None and not pruner.accepts_criterion:
        raise SparsecraftError(f"{name} chooses what to remove itself; leave criterion unset (got {criterion!r})")
    dist = make_distribution(distribution).registry_name  # type: ignore[attr-defined]
    if dist not in pruner.distributions:
        allowed = " or ".join(map(repr, pruner.distributions))
        raise SparsecraftError(f"{name} takes distribution {allowed}, got {dist!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SparsecraftError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    targets, ignore = check_regexes(targets, "targets") or None, check_regexes(ignore, "ignore")
    t0 = time.perf_counter()
    before = count_params(model)
    summary = pruner.prune_model(model, sparsity, criterion=criterion, distribution=dist, targets=targets,
                                 ignore=ignore, calib=calib, loss_fn=loss_fn, batch_size=batch_size, progress=progress)
    after = count_params(model)
    from sparsecraft.oneshot.api import default_targets

    rep = report(model, targets=default_targets(model))
    rep.info.update({
        "method": name, "criterion": criterion if pruner.accepts_criterion else None, "pattern": "structured",
        "distribution": dist, "sparsity": sparsity, "wall_time_s": round(time.perf_counter() - t0, 3),
        "structure": {"params_before": before, "params_after": after,
                      "param_reduction": 1.0 - after / before if before else 0.0, **summary},
    })
    return rep
