"""Top-k activation (Lazy Neuron, Li et al. 2023, Sec. 5): per token keep the k largest entries
of the MLP hidden activation, zero the rest -- in training and in inference.

The paper's MLPs use ReLU, whose activation is non-negative, so "the k largest values" and "the
k largest magnitudes" are the same set. A gated SiLU MLP (``act(gate) * up``) has signed
activations of either sign carrying equal weight, so the default here ranks by magnitude
(``by="magnitude"``); ``by="value"`` ranks by signed value (the literal rule). Exactly ``k``
entries are kept per token (``torch.topk``; ties broken by position). The kept entries pass
their gradient unchanged, the zeroed ones get none (a mask computed without gradient, as a
hard top-k layer trains).
"""

from __future__ import annotations

import torch
from torch import nn

from sparsecraft.activations.base import TRANSFORMS, ActivationRule, ActivationTransform, wrap_site
from sparsecraft.activations.sites import MLPSite, find_sites
from sparsecraft.errors import SparsecraftError

RANKINGS = ("magnitude", "value")


class TopKRule(ActivationRule):
    """Keep the ``k`` largest entries (by magnitude or value) of each token's activation."""

    def __init__(self, k: int, hidden: int, by: str = "magnitude") -> None:
        super().__init__()
        check_k(k, hidden)
        if by not in RANKINGS:
            raise SparsecraftError(f"top-k by {by!r} is not a ranking; allowed: {', '.join(RANKINGS)}")
        self.k, self.hidden, self.by = int(k), int(hidden), by

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.k >= a.shape[-1]:
            return a
        with torch.no_grad():
            score = a.abs() if self.by == "magnitude" else a
            idx = score.topk(self.k, dim=-1, sorted=False).indices
            keep = torch.zeros_like(a, dtype=torch.bool).scatter_(-1, idx, True)
        return a.masked_fill(~keep, 0)

    def expected_sparsity(self) -> float:
        return 1.0 - self.k / self.hidden

    def extra_repr(self) -> str:
        return f"k={self.k}, hidden={self.hidden}, by={self.by}"


def check_k(k: object, hidden: int) -> int:
    """``k`` as an int in [1, hidden], else a one-line error naming it."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise SparsecraftError(f"top-k k must be an integer, got {k!r}")
    if k < 1 or k > hidden:
        raise SparsecraftError(f"top-k k={k} is outside [1, {hidden}] (the MLP hidden width)")
    return k


@TRANSFORMS.register("topk")
class TopK(ActivationTransform):
    """Top-k activation: keep the k largest entries per token of every MLP hidden activation."""

    def __init__(self, k: int | float, by: str = "magnitude") -> None:
        if isinstance(k, float) and not 0 < k <= 1:
            raise SparsecraftError(f"top-k as a fraction must be in (0, 1], got {k}")
        if by not in RANKINGS:
            raise SparsecraftError(f"top-k by {by!r} is not a ranking; allowed: {', '.join(RANKINGS)}")
        self.k, self.by = k, by

    def k_for(self, hidden: int) -> int:
        """``k`` itself, or a fraction of the hidden width rounded to the nearest integer (>= 1)."""
        if isinstance(self.k, float):
            return max(1, round(self.k * hidden))
        return check_k(self.k, hidden)

    def apply(self, model: nn.Module) -> list[MLPSite]:
        sites = find_sites(model)
        ks = [self.k_for(s.hidden) for s in sites]  # validate every site before changing one
        for site, k in zip(sites, ks):
            wrap_site(site, TopKRule(k, site.hidden, self.by))
        return sites

    def to_dict(self) -> dict:
        return {"type": "topk", "k": self.k, "by": self.by}
