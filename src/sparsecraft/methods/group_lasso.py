"""Group lasso with a proximal step, on channel, block or N:M-group structure.

Regulariser ``lambda * sum_g ||w_g||_2`` over groups ``g`` of a weight's row view
(:mod:`sparsecraft.layout`); ALGORITHMS.md, "Structured / regularised". Instead of adding its
subgradient to the loss, every optimizer step is followed by the proximal operator of
``lr * lambda * ||.||_2`` (block soft-thresholding, Yuan & Lin 2006; Parikh & Boyd 2014 §6.5.4)::

    w_g <- w_g * max(0, 1 - lr * lambda / ||w_g||_2)

i.e. each group's norm shrinks by ``lr * lambda`` and the group becomes exactly zero when its
norm is below that. Groups:

* ``"channel"``: a whole output row (neuron / conv filter);
* ``"block:HxW"``: an H x W tile of the row view;
* ``"N:M"`` / ``"group:M"``: M consecutive inputs (the groups N:M works on).

Training: ``total_steps - finetune_steps`` steps of SGD/Adam + prox, then the groups are
pruned with hard masks and the rest fine-tunes; ``finalize`` prunes if that has not happened.
At the prune the zeroed groups -- and, if a target ``sparsity`` is given, the
lowest-norm groups up to it -- are removed by a hard mask of the group's pattern (channel
pruning for ``"channel"``; masked, not physically removed).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.layout import WeightLayout
from sparsecraft.methods.base import METHODS
from sparsecraft.methods.prune_then_finetune import PruneThenFinetune
from sparsecraft.patterns import Block, Channel, Pattern, parse_pattern
from sparsecraft.targets import Target


def group_shape(groups: str, layout: WeightLayout) -> tuple[int, int]:
    """(h, w) of one group tile in the row view of ``layout``."""
    g = groups.strip().lower()
    if g == "channel":
        return 1, layout.cols
    m = re.fullmatch(r"(?:\d+\s*:|group\s*:)\s*(\d+)", g)
    if m:
        return 1, int(m.group(1))
    p = parse_pattern(groups)
    if isinstance(p, Block):
        return p.h, p.w
    raise SparsecraftError(
        f"group-lasso groups {groups!r} not understood; allowed: 'channel', 'block:HxW', 'N:M' or 'group:M'"
    )


def group_pattern(groups: str, layout: WeightLayout) -> Pattern:
    """The pattern that prunes whole groups (scores = squared weights, summed per tile)."""
    if groups.strip().lower() == "channel":
        return Channel()
    h, w = group_shape(groups, layout)
    return Block(h, w)


def _tiles(rows: torch.Tensor, h: int, w: int) -> torch.Tensor:
    r, c = rows.shape
    if r % h or c % w:
        raise SparsecraftError(f"row view {r}x{c} cannot be cut into {h}x{w} groups")
    return rows.reshape(r // h, h, c // w, w)


def group_norms(rows: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """L2 norm of every (h, w) tile of a row-view matrix: shape (rows/h, cols/w)."""
    return _tiles(rows, h, w).pow(2).sum(dim=(1, 3)).sqrt()


@torch.no_grad()
def prox_group_lasso_(weight: torch.Tensor, layout: WeightLayout, h: int, w: int, thresh: float) -> int:
    """In place: ``w_g *= max(0, 1 - thresh / ||w_g||)`` for every group; returns the number
    of groups that are exactly zero afterwards."""
    rows = layout.to_rows(weight)
    tiles = _tiles(rows, h, w)
    norms = tiles.pow(2).sum(dim=(1, 3), keepdim=True).sqrt()
    factor = torch.clamp(1.0 - thresh / norms.clamp_min(torch.finfo(norms.dtype).tiny), min=0.0)
    new_rows = (tiles * factor).reshape(rows.shape)
    weight.copy_(layout.from_rows(new_rows))
    return int((factor == 0).sum())


def group_lasso_penalty(weight: torch.Tensor, layout: WeightLayout, h: int, w: int) -> torch.Tensor:
    """``sum_g ||w_g||_2`` (for logging the regulariser's value)."""
    return group_norms(layout.to_rows(weight), h, w).sum()


def _lr_of(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> float:
    if optimizer is None:
        raise SparsecraftError("group-lasso needs the optimizer (its lr scales the prox step)")
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return float(group["lr"])
    raise SparsecraftError("a group-lasso target weight is not in the optimizer")


@METHODS.register("group-lasso")
class GroupLasso(PruneThenFinetune):
    """Proximal group lasso on channel / block / N:M groups, then group (channel) pruning."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        groups: str = "channel",
        lam: float = 1e-4,
        finetune_steps: int | float = 0.1,
        **kwargs: Any,
    ) -> None:
        if lam < 0:
            raise SparsecraftError(f"group-lasso lam must be >= 0, got {lam}")
        kwargs.setdefault("sparsity", 0.0)
        kwargs.setdefault("distribution", "uniform")
        super().__init__(model, optimizer, **kwargs)
        self.groups, self.lam = groups, float(lam)
        self.shapes = {t.name: group_shape(groups, t.layout) for t in self.targets}
        for t in self.targets:
            h, w = self.shapes[t.name]
            if t.layout.rows % h or t.layout.cols % w:
                raise SparsecraftError(
                    f"layer {t.name!r} (row view {t.layout.rows}x{t.layout.cols}) cannot be cut "
                    f"into {h}x{w} groups for {groups!r}"
                )
        self.set_finetune_steps(finetune_steps)
        self.zero_groups: dict[str, int] = {}

    def initial_masks(self) -> dict[str, torch.Tensor]:
        return {t.name: torch.ones_like(t.param, dtype=torch.bool) for t in self.targets}

    @torch.no_grad()
    def prox(self) -> None:
        """One proximal step on every target with threshold ``lr * lam``."""
        for t in self.targets:
            h, w = self.shapes[t.name]
            thresh = _lr_of(self.optimizer, t.param) * self.lam
            self.zero_groups[t.name] = prox_group_lasso_(t.param, t.layout, h, w, thresh)

    def group_keep(self, t: Target, sparsity: float) -> torch.Tensor:
        """Keep-mask: zero-norm groups go, then the lowest-norm ones up to ``sparsity``."""
        rows = t.layout.to_rows(t.param.detach()).float().pow(2)
        pattern = group_pattern(self.groups, t.layout)
        keep = pattern.mask(rows, sparsity)
        h, w = self.shapes[t.name]
        nonzero = group_norms(rows, h, w) > 0
        keep &= nonzero.repeat_interleave(h, 0).repeat_interleave(w, 1)
        return t.layout.from_rows(keep).contiguous()

    @torch.no_grad()
    def hard_prune(self) -> None:
        """Prune whole groups (zero-norm ones first) to the target sparsity."""
        s = self.target_sparsity()
        self._set_masks({t.name: self.group_keep(t, s) for t in self.targets})

    def soft_step(self) -> None:
        self.prox()
