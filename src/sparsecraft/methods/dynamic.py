"""Dynamic sparse training: the drop/grow update shared by SET and RigL.

ALGORITHMS.md "SET / RigL update", per layer, every DeltaT steps while updates are on:

1. drop k = floor(f(t) * active) active weights with the smallest |w|;
2. grow k weights among the inactive positions (including the ones just dropped), chosen
   by :meth:`DynamicSparse.grow_scores` (SET: random; RigL: |dense gradient|);
3. grown weights start at 0 and their optimizer state is reset to 0; a weight dropped and
   regrown in the same update keeps its value (its mask bit never changed). Per-layer
   sparsity is exactly unchanged.

Drop fraction (cosine, Evci et al. 2020): f(t) = (alpha/2)(1 + cos(pi * min(t, T)/T)) with
alpha = 0.3 and T the step where updates stop (default 75% of training); DeltaT = 100.
Initial mask: random with ERK densities. Ties (equal |w|, equal gradients, the zeros of
grown weights) are broken uniformly at random with the method's seeded generator, not by
index order: equivalent to "tiny noise" without changing any value.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sparsecraft.distributed import fsdp
from sparsecraft.methods.base import SparseMethod
from sparsecraft.schedules import Cosine
from sparsecraft.targets import Target


def _k_extreme(scores: torch.Tensor, k: int, largest: bool, gen: torch.Generator) -> torch.Tensor:
    """Flat indices of the k smallest (or largest) scores, ties broken at random.

    One ``topk`` finds the k-th value v; every score strictly beyond v is taken, and the rest
    are drawn uniformly (seeded permutation) among the scores equal to v. Same result as
    sorting with random tie order, without permuting the whole tensor."""
    flat = scores.reshape(-1)
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=flat.device)
    if k >= flat.numel():
        return torch.arange(flat.numel(), device=flat.device)
    vals = torch.topk(flat, k, largest=largest, sorted=False).values
    v = vals.min() if largest else vals.max()
    sure = torch.nonzero(flat > v if largest else flat < v).flatten()
    ties = torch.nonzero(flat == v).flatten()
    pick = torch.randperm(ties.numel(), generator=gen)[: k - sure.numel()].to(flat.device)
    return torch.cat([sure, ties[pick]])


def drop_grow(
    weight: torch.Tensor,
    mask: torch.Tensor,
    fraction: float,
    grow_scores: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """One drop/grow update of one layer; returns the new keep-mask (same count of ones)."""
    active = int(mask.sum())
    k = math.floor(fraction * active)
    if k <= 0:
        return mask.clone()
    flat_mask = mask.reshape(-1)
    drop_score = weight.detach().abs().float().reshape(-1).masked_fill(~flat_mask, float("inf"))
    dropped = _k_extreme(drop_score, k, largest=False, gen=gen)
    new = flat_mask.clone()
    new[dropped] = False
    grow = grow_scores.detach().float().reshape(-1).masked_fill(new, float("-inf"))
    grown = _k_extreme(grow, k, largest=True, gen=gen)
    new[grown] = True
    return new.view_as(mask)


class DynamicSparse(SparseMethod):
    """Base of SET and RigL: fixed per-layer budgets, periodic drop/grow."""

    default_update = {"every": 100, "start": 0, "stop": 0.75}

    def __init__(self, model, optimizer=None, *, alpha: float = 0.3, **kw: Any) -> None:  # noqa: ANN001
        if kw.get("criterion") is None:
            kw["criterion"] = {"type": "random", "seed": int(kw.get("seed", 0))}
        super().__init__(model, optimizer, **kw)
        self.alpha = float(alpha)
        stop = self.update_rule.stop
        end = self.total_steps if stop is None else max(stop, 1)
        self.drop_fraction = Cosine(final=0.0, initial=self.alpha, start=0, end=end)

    def grow_scores(self, target: Target) -> torch.Tensor:
        raise NotImplementedError

    def compute_masks(self, step: int) -> dict[str, torch.Tensor]:
        f = self.drop_fraction(step)
        full = fsdp.full  # FSDP2: drop and grow on the gathered layer, the same on every rank
        return {t.name: drop_grow(full(t.param), full(self.mask(t)), f, full(self.grow_scores(t)), self.generator)
                for t in self.targets}
