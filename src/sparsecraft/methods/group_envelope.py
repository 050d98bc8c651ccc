"""Group sparse envelope regularisation (WGSEF, k-level structured sparsity) with a proximal step.

Paper: Refael, Arbel & Huleihel, "Learning k-Level Structured Sparse Neural Networks Using Group
Envelope Regularization" (papers.txt). The sparse envelope function (SEF, Beck & Hallak) is the
convex envelope of ``1/2 ||u||^2`` restricted to k-sparse vectors,

    s_k(u) = (f + delta_{||.||_0 <= k})**(u),   f = 1/2 ||.||^2,

i.e. half the squared k-support norm (Argyriou, Foygel & Srebro 2012): with ``|u|`` sorted
decreasingly (``z_0 = +inf``) and ``r`` the unique integer in ``[0, k)`` with
``z_{k-r-1} > sum_{i >= k-r} z_i / (r + 1) >= z_{k-r}``,

    s_k(u) = 1/2 [ sum_{i < k-r} z_i^2 + (sum_{i >= k-r} z_i)^2 / (r + 1) ].

The group version applies ``s_k`` to the vector of group norms ``u_g = ||w_g||_2`` (groups of the
weight's row view as in :mod:`~.group_lasso`: channels, ``block:HxW`` tiles, ``group:M``); a
function of the group norms that is a symmetric gauge has its prox by scaling each group:
``prox(w)_g = w_g * prox_{s_k}(u)_g / u_g``. The prox of ``lam * s_k`` uses the box-norm form
``s_k(u) = inf {1/2 sum_i u_i^2 / theta_i : 0 < theta_i <= 1, sum theta_i <= k}`` (McDonald, Pontil &
Stamos 2014): minimising over ``z`` first gives ``z_i = theta_i u_i / (theta_i + lam)``, and the
optimal ``theta_i = clip(t |u_i| - lam, 0, 1)`` with ``t`` set so that ``sum theta_i = k`` (found by
bisection; ``sum`` is monotone in ``t``). Groups with ``t |u_i| <= lam`` become exactly zero; at
least ``k`` groups always stay, and as ``lam`` grows the survivors tend to exactly ``k`` -- the
"k-level" property that lets the sparsity be fixed in advance.

Method: after every optimizer step until ``total_steps - finetune_steps``, each target weight gets
the prox of ``lr * lam * s_k`` with ``k = groups - floor(sparsity * groups)`` per layer; then the
zero groups and the lowest-norm ones up to ``sparsity`` are pruned with hard masks (as group
lasso) and the rest fine-tunes. Departure: the paper's per-group weights are all 1 here (within
one layer every group has the same size, so constant weights only rescale ``lam``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.layout import WeightLayout
from sparsecraft.methods.base import METHODS
from sparsecraft.methods.group_lasso import GroupLasso, _lr_of, _tiles, group_norms
from sparsecraft.patterns import count_to_prune


def sef_value(u: torch.Tensor, k: int) -> float:
    """``s_k(u)``: half the squared k-support norm of the 1-D vector ``u`` (closed form above)."""
    z = u.detach().abs().double().flatten().sort(descending=True).values
    d = z.numel()
    if k < 1:
        raise SparsecraftError(f"the envelope level k must be >= 1, got {k}")
    if k >= d:
        return 0.5 * float(z.pow(2).sum())
    tail = z.flip(0).cumsum(0).flip(0)  # tail[i] = sum_{j >= i} z_j
    for r in range(k):
        head = float("inf") if k - r - 1 == 0 else float(z[k - r - 2])
        mean = float(tail[k - r - 1]) / (r + 1)
        if head > mean >= float(z[k - r - 1]):
            return 0.5 * (float(z[: k - r - 1].pow(2).sum()) + float(tail[k - r - 1]) ** 2 / (r + 1))
    raise AssertionError("no valid r (cannot happen for finite input)")  # pragma: no cover


def prox_sef(u: torch.Tensor, k: int, lam: float, iters: int = 100) -> torch.Tensor:
    """``argmin_z lam * s_k(z) + 1/2 ||z - u||^2`` for a 1-D ``u`` (box-norm water-filling)."""
    if k < 1 or lam < 0:
        raise SparsecraftError(f"need k >= 1 and lam >= 0, got k={k}, lam={lam}")
    a = u.detach().double().abs()
    nonzero = a > 0
    if int(nonzero.sum()) <= k:
        theta = nonzero.double()
    else:
        lo, hi = 0.0, (1.0 + lam) / float(a[nonzero].min())
        for _ in range(iters):
            t = 0.5 * (lo + hi)
            if float((t * a - lam).clamp(0.0, 1.0).sum()) < k:
                lo = t
            else:
                hi = t
        theta = (hi * a - lam).clamp(0.0, 1.0)
    z = torch.where(theta > 0, theta * a / (theta + lam), torch.zeros_like(a))
    return (z * u.detach().double().sign()).to(u.dtype)


def envelope_level(n_groups: int, sparsity: float) -> int:
    """k = groups kept at ``sparsity`` (the pruning convention: floor(s * n) removed), at least 1."""
    return max(1, n_groups - count_to_prune(sparsity, n_groups))


@torch.no_grad()
def prox_group_envelope_(weight: torch.Tensor, layout: WeightLayout, h: int, w: int, k: int, thresh: float) -> int:
    """In place: every (h, w) group scaled to the prox of ``thresh * s_k`` of the group norms;
    returns the number of groups that are exactly zero afterwards."""
    rows = layout.to_rows(weight)
    tiles = _tiles(rows, h, w)
    norms = tiles.pow(2).sum(dim=(1, 3)).sqrt()
    target = prox_sef(norms.flatten(), k, thresh).reshape(norms.shape).to(norms.dtype)
    factor = torch.where(norms > 0, target / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(norms))
    weight.copy_(layout.from_rows((tiles * factor[:, None, :, None]).reshape(rows.shape)))
    return int((factor == 0).sum())


def group_envelope_penalty(weight: torch.Tensor, layout: WeightLayout, h: int, w: int, k: int) -> float:
    """``s_k`` of the group norms (for logging the regulariser's value)."""
    return sef_value(group_norms(layout.to_rows(weight.detach()), h, w).flatten(), k)


@METHODS.register("group-envelope")
class GroupEnvelope(GroupLasso):
    """Proximal WGSEF (group sparse envelope) regularisation at a preset k, then group pruning."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 groups: str = "channel", lam: float = 1.0, sparsity: Any = 0.5, **kwargs: Any) -> None:
        super().__init__(model, optimizer, groups=groups, lam=lam, sparsity=sparsity, **kwargs)
        self.levels: dict[str, int] = {}

    def level(self, name: str, rows: int, cols: int) -> int:
        """k of one target: its group count minus the pruned groups at the target sparsity."""
        h, w = self.shapes[name]
        return envelope_level((rows // h) * (cols // w), self.target_sparsity())

    @torch.no_grad()
    def prox(self) -> None:
        """One proximal step of ``lr * lam * s_k`` on every target's group norms."""
        for t in self.targets:
            h, w = self.shapes[t.name]
            k = self.levels[t.name] = self.level(t.name, t.layout.rows, t.layout.cols)
            thresh = _lr_of(self.optimizer, t.param) * self.lam
            self.zero_groups[t.name] = prox_group_envelope_(t.param, t.layout, h, w, k, thresh)
