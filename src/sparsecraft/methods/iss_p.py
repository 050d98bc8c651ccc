"""``iss-p``: Iterative Soft Shrinkage-Percentage (Wang et al., 2023), IHT as ``alpha = 0``.

"Iterative Soft Shrinkage Learning for Efficient Image Super-Resolution" (ALGORITHMS.md,
"N:M training", ISS-P). Training starts from a dense, randomly initialised network. After every
optimizer step the set ``L_t`` of currently lowest-``|w|`` weights is chosen again -- the
lowest ``s`` fraction of each layer (``pattern="unstructured"``; the layer budgets come from
``distribution``, uniform by default) or the ``M - N`` smallest of every group of M inputs
(``pattern="N:M"``) -- and *shrunk* instead of zeroed::

    w[L_t] <- alpha * w[L_t],        alpha in [0.95, 0.99] (default 0.97)

so an unimportant weight can still grow back if its gradient says so. ``alpha = 0`` is
iterative hard thresholding (IHT: zero ``L_t`` every step, re-chosen every step). At
``total_steps - finetune_steps`` the lowest set is pruned for good (hard masks, zeros kept,
optimizer state of pruned weights zeroed) and the remaining steps fine-tune the survivors.
During the shrinkage phase forward uses the weights themselves, so reports show the true
(low) sparsity until the hard prune.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods.base import METHODS
from sparsecraft.methods.prune_then_finetune import PruneThenFinetune


@METHODS.register("iss-p")
class ISSP(PruneThenFinetune):
    """Soft shrinkage: multiply the lowest-|w| set by alpha after every step; hard prune at
    the end (alpha = 0: IHT)."""

    default_distribution = "uniform"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        alpha: float = 0.97,
        finetune_steps: int | float = 0.1,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= alpha < 1.0:
            raise SparsecraftError(f"iss-p alpha must be in [0, 1), got {alpha}")
        super().__init__(model, optimizer, **kwargs)
        if self.pattern.fixed_sparsity:  # N:M fixes the sparsity; a given number is ignored
            n, m = self.pattern.n, self.pattern.m  # type: ignore[attr-defined]
            self.sparsity = lambda step: 1.0 - n / m  # type: ignore[assignment]
        self.alpha = float(alpha)
        self.set_finetune_steps(finetune_steps)

    def initial_masks(self) -> dict[str, torch.Tensor]:
        """Nothing is masked during the shrinkage phase."""
        return {t.name: torch.ones_like(t.param, dtype=torch.bool) for t in self.targets}

    def lowest_sets(self) -> dict[str, torch.Tensor]:
        """The weights the pattern would prune now (True = in the lowest set)."""
        return {name: ~keep for name, keep in self.plan(self.target_sparsity()).items()}

    @torch.no_grad()
    def shrink(self) -> None:
        """``w[L_t] *= alpha`` with ``L_t`` re-chosen from the current weights."""
        low = self.lowest_sets()
        for t in self.targets:
            factor = torch.where(low[t.name], self.alpha, 1.0).to(t.param.dtype)
            t.param.mul_(factor)

    def soft_step(self) -> None:
        self.shrink()

    @torch.no_grad()
    def hard_prune(self) -> None:
        """Zero the current lowest set for good; the rest of training fine-tunes."""
        self._set_masks(self.plan(self.target_sparsity()))
