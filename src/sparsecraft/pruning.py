"""One-shot pruning of any ``nn.Module``: criterion -> scores, distribution -> per-layer
sparsity, pattern -> mask, then attach the masks (zeros in place) and report.

Weights already masked stay pruned (their scores are set to -inf), so calling :func:`prune`
again with a higher sparsity only removes more (the gradual/iterative methods rely on it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsecraft.criteria import Criterion, LossFn, make_criterion
from sparsecraft.distributions import Distribution, make_distribution
from sparsecraft.errors import ShapeError, SparsecraftError
from sparsecraft.masks import MASK_SUFFIX, MaskMeta, set_mask
from sparsecraft.patterns import Pattern, parse_pattern
from sparsecraft.report import SparsityReport, report
from sparsecraft.targets import Target, find_targets


@dataclass
class Override:
    """Per-layer override: layers whose name matches ``match`` (regex) get this pattern and/or
    sparsity instead of the plan's."""

    match: str
    pattern: Any = None
    sparsity: float | None = None

    def applies(self, target: Target) -> bool:
        return self.match in (target.name, target.module_name) or bool(re.search(self.match, target.name))


def _overrides(items: Iterable[Any] | None) -> list[Override]:
    out = []
    for item in items or []:
        if isinstance(item, Override):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(Override(**item))
        else:
            raise SparsecraftError(f"an override must be a dict with 'match', got {item!r}")
    return out


def current_scores(criterion: Criterion, target: Target) -> torch.Tensor:
    """Criterion scores with already-pruned weights forced to -inf (they stay pruned)."""
    score = criterion.score(target).float().clone()
    mask = getattr(target.module, target.param_name + MASK_SUFFIX, None)
    if mask is not None:
        score.masked_fill_(~mask, float("-inf"))
    return score


def decide_masks(
    targets: Sequence[Target],
    sparsity: float,
    pattern: Pattern,
    criterion: Criterion,
    distribution: Distribution,
    overrides: Sequence[Override] = (),
    skip_unfit: bool = False,
) -> dict[str, tuple[Target, Pattern, float, torch.Tensor]]:
    """Decide every target's (pattern, sparsity, keep-mask) without touching the model."""
    chosen: list[tuple[Target, Pattern, float | None]] = []
    for t in targets:
        p, s = pattern, None
        for ov in overrides:
            if ov.applies(t):
                p = parse_pattern(ov.pattern) if ov.pattern is not None else p
                s = ov.sparsity if ov.sparsity is not None else s
                break
        layout = t.layout
        try:
            p.check(layout.rows, layout.cols, t.name)
        except ShapeError:
            if skip_unfit:
                continue
            raise
        chosen.append((t, p, s))
    scores = {t.name: current_scores(criterion, t) for t, _, _ in chosen}
    free = [t for t, _, s in chosen if s is None]
    alloc = distribution.allocate(free, sparsity, scores) if free else {}
    plan = {}
    for t, p, s in chosen:
        s = alloc[t.name] if s is None else float(s)
        layout = t.layout
        keep_rows = p.mask(layout.to_rows(scores[t.name]), s)
        plan[t.name] = (t, p, s, layout.from_rows(keep_rows))
    return plan


def prune(
    model: nn.Module,
    sparsity: float,
    pattern: Any = "unstructured",
    criterion: Any = "magnitude",
    distribution: Any = "uniform",
    *,
    include: Sequence[str] | None = None,
    keep_dense: Sequence[str] | None = None,
    overrides: Iterable[Any] | None = None,
    skip_unfit: bool = False,
    data: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    method: str = "oneshot",
    step: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> SparsityReport:
    """Prune ``model`` in place in one shot and return the exact :class:`SparsityReport`.

    Args:
        sparsity: total fraction of zeros over the prunable weights (ignored by N:M).
        pattern: ``"unstructured"``, ``"2:4"`` (any N:M), ``"block:4x4"``, ``"channel"``, ``"row"``.
        criterion: ``"magnitude"``, ``"random"``, ``"saliency"``, ``"movement"``, ``"gradient"``.
        distribution: ``"uniform"``, ``"er"``, ``"erk"``, ``"global"``, or
            ``{"type": "explicit", "sparsities": {regex: s}}``.
        include: regexes of the layers to consider (default: every Linear/Conv).
        keep_dense: names/regexes of layers kept dense (e.g. ``["lm_head", "^0$"]``).
        overrides: ``[{"match": regex, "pattern": ..., "sparsity": ...}]``.
        skip_unfit: skip layers whose shape cannot take the pattern instead of raising.
        data, loss_fn: batches (and loss) for gradient-based criteria.
    """
    if not 0.0 <= float(sparsity) <= 1.0:
        raise SparsecraftError(f"sparsity must be in [0, 1], got {sparsity}")
    pat = parse_pattern(pattern)
    crit = make_criterion(criterion)
    dist = make_distribution(distribution)
    targets = find_targets(model, include=include, keep_dense=keep_dense)
    if not targets:
        raise SparsecraftError("no prunable layer found (Linear, Conv1d/2d/3d or GPT-2 Conv1D)")
    crit.prepare(model, targets, data=data, loss_fn=loss_fn)
    plan = decide_masks(targets, float(sparsity), pat, crit, dist, _overrides(overrides), skip_unfit)
    items: Iterable = plan.values()
    if progress is not None:
        items = progress(list(items))
    for t, p, s, keep in items:
        target_sparsity = p.achieved_sparsity(t.layout.rows, t.layout.cols, s)
        set_mask(t.module, keep, t.param_name, MaskMeta(p.spec(), target_sparsity, method, step))
    return report(model, include=include)
