"""RigL: Rigging the Lottery (Evci et al. 2020).

Like SET (:mod:`sparsecraft.methods.dynamic`), but the k regrown positions are those with the
largest |dense gradient of the loss w.r.t. the masked weight|, i.e. the gradient of the
current step *before* it is masked. The gradient is captured in the optimizer's step
pre-hook on update steps; under DistributedDataParallel that gradient is already
all-reduced, so every rank grows the same connections (masks are also broadcast from rank 0
after each update as a guard).

**No weight update on mask-update steps** (``skip_step_on_update=True``, the default): in the
reference code the mask update *replaces* the optimizer update on those iterations
(google-research/rigl ``SparseRigLOptimizer.apply_gradients``: ``cond(is_mask_update_iter,
mask_update, apply_gradients)``; the PyTorch port's ``RigLScheduler.__call__`` returns False
so the loop skips ``optimizer.step()``). Here the pre-step hook sets every gradient aside for
that step (:mod:`~sparsecraft.methods.step_hooks`), so any torch optimizer leaves weights and
state untouched; drop and grow then use the weights of the previous step and this step's
dense gradient, as in the reference. Differences: the skipped step still counts in
``total_steps`` (the TF global step does not advance on a mask-update iteration); and the
skip needs the pre-step hook (``hooks=True`` or the HF / Lightning callbacks): with
``hooks=False`` and ``method.step()`` after ``optimizer.step()`` the step has already
happened. ``skip_step_on_update=False`` applies the update and then changes the mask (SET's
order, and the behaviour of sparsecraft before this option).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods.base import METHODS
from sparsecraft.methods.dynamic import DynamicSparse
from sparsecraft.targets import Target


@METHODS.register("rigl")
class RigL(DynamicSparse):
    """RigL: drop smallest |w|, regrow largest |dense gradient| (Evci et al. 2020)."""

    needs_dense_grad = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        skip_step_on_update: bool = True,
        **kw: Any,
    ) -> None:
        if not isinstance(skip_step_on_update, bool):
            raise SparsecraftError(f"rigl skip_step_on_update must be True or False, got {skip_step_on_update!r}")
        super().__init__(model, optimizer, **kw)
        self.skip_step_on_update = skip_step_on_update

    def skip_optimizer_step(self) -> bool:
        """The reference's rule: an iteration that updates the mask makes no weight update."""
        return self.skip_step_on_update and self.update_rule.should_update(self.step_count + 1)

    def grow_scores(self, target: Target) -> torch.Tensor:
        grad = self._dense_grads.get(target.name)
        if grad is None:
            raise SparsecraftError(
                f"RigL update at step {self.step_count} found no gradient for {target.name!r}: "
                "call the update after backward and before zero_grad (optimizer hooks do this)"
            )
        return grad.abs()
