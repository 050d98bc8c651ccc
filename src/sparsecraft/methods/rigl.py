"""RigL: Rigging the Lottery (Evci et al. 2020).

Like SET (:mod:`sparsecraft.methods.dynamic`), but the k regrown positions are those with the
largest |dense gradient of the loss w.r.t. the masked weight|, i.e. the gradient of the
current step *before* it is masked. The gradient is captured in the optimizer's step
pre-hook on update steps; under DistributedDataParallel that gradient is already
all-reduced, so every rank grows the same connections (masks are also broadcast from rank 0
after each update as a guard).
"""

from __future__ import annotations

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods.base import METHODS
from sparsecraft.methods.dynamic import DynamicSparse
from sparsecraft.targets import Target


@METHODS.register("rigl")
class RigL(DynamicSparse):
    """RigL: drop smallest |w|, regrow largest |dense gradient| (Evci et al. 2020)."""

    needs_dense_grad = True

    def grow_scores(self, target: Target) -> torch.Tensor:
        grad = self._dense_grads.get(target.name)
        if grad is None:
            raise SparsecraftError(
                f"RigL update at step {self.step_count} found no gradient for {target.name!r}: "
                "call the update after backward and before zero_grad (optimizer hooks do this)"
            )
        return grad.abs()
