"""Pruning by a criterion, the bottom layer of one-shot pruning: criterion -> scores,
distribution -> per-layer sparsity, pattern -> mask, then attach the masks (zeros in place) and
report. :func:`sparsecraft.prune` (in :mod:`sparsecraft.oneshot.api`) is the public door; the
training methods use :func:`prune_by_criterion` and :func:`decide_masks` directly.

Weights already masked stay pruned (their scores are set to -inf), so pruning
again with a higher sparsity only removes more (the gradual/iterative methods rely on it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

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


def parse_overrides(items: Iterable[Any] | None) -> list[Override]:
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


def layer_choices(
    targets: Sequence[Target], pattern: Pattern, overrides: Sequence[Override] = (), skip_unfit: bool = False
) -> list[tuple[Target, Pattern, float | None]]:
    """Every target's pattern and override sparsity (``None``: the distribution decides); a
    layer whose shape cannot take its pattern raises, or is left out with ``skip_unfit``."""
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
    return chosen


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
    chosen = layer_choices(targets, pattern, overrides, skip_unfit)
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


def prune_by_criterion(
    model: nn.Module,
    sparsity: float,
    pattern: Any = "unstructured",
    criterion: Any = "magnitude",
    distribution: Any = "uniform",
    *,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    overrides: Iterable[Any] | None = None,
    skip_unfit: bool = False,
    calib: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    label: str | None = None,
    step: int = 0,
    progress: bool = False,
) -> SparsityReport:
    """Data-free (or gradient-scored) one-shot pruning of any ``nn.Module``, in place: the
    criterion scores every target, the distribution splits ``sparsity`` over them, the pattern
    turns scores into masks. The public door is :func:`sparsecraft.prune`, which also runs the
    calibrated block-by-block methods; training methods call this function directly.

    Args:
        calib, loss_fn: batches (and a loss) for gradient-based criteria (saliency, movement,
            gradient).
        label: the ``method`` recorded in each mask's metadata (default: the criterion's name).
    """
    pat = parse_pattern(pattern)
    crit = make_criterion(criterion)
    dist = make_distribution(distribution)
    found = find_targets(model, targets=targets, ignore=ignore)
    if not found:
        raise SparsecraftError(
            "no prunable layer found (Linear, Conv1d/2d/3d or GPT-2 Conv1D)"
            + (f" matching targets={list(targets)}" if targets else "")
            + (f" outside ignore={list(ignore)}" if ignore else "")
        )
    crit.prepare(model, found, data=calib, loss_fn=loss_fn)
    plan = decide_masks(found, float(sparsity), pat, crit, dist, parse_overrides(overrides), skip_unfit)
    items: Iterable = plan.values()
    if progress:
        items = tqdm(list(items), desc="prune", file=sys.stderr, leave=False)
    name = label or crit.registry_name  # type: ignore[attr-defined]
    for t, p, s, keep in items:
        target_sparsity = p.achieved_sparsity(t.layout.rows, t.layout.cols, s)
        set_mask(t.module, keep, t.param_name, MaskMeta(p.spec(), target_sparsity, name, step))
    return report(model, targets=targets)  # ignored layers are listed too, as dense rows
