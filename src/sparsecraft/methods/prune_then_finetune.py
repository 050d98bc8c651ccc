"""Shared lifecycle of the methods that regularise softly, then prune hard and fine-tune
(ISS-P, group lasso): a soft step after every optimizer step until ``prune_step``, one hard
prune there (or at ``finalize`` if training stopped earlier), plain masked fine-tuning after."""

from __future__ import annotations

from typing import Any

import torch

from sparsecraft.methods.base import SparseMethod, resolve_step


class PruneThenFinetune(SparseMethod):
    """Subclasses implement :meth:`soft_step` and :meth:`hard_prune` (which sets the masks)."""

    pruned: bool = False
    prune_step: int = 0

    def set_finetune_steps(self, finetune_steps: int | float) -> None:
        """Prune at ``total_steps - finetune_steps`` (a float is a fraction of training)."""
        self.prune_step = self.total_steps - (resolve_step(finetune_steps, self.total_steps) or 0)
        self.pruned = False

    def soft_step(self) -> None:
        raise NotImplementedError

    def hard_prune(self) -> None:
        raise NotImplementedError

    def post_step(self) -> None:
        if self.pruned:
            return
        if self.step_count >= self.prune_step:
            self.hard_prune()
            self.pruned = True
        else:
            self.soft_step()

    def finalize(self) -> None:
        if not self.pruned:
            self.hard_prune()
            self.pruned = True
        super().finalize()

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().extra_state()
        return tensors, {**meta, "pruned": self.pruned}

    def load_extra_state(self, tensors: Any, meta: Any) -> None:
        super().load_extra_state(tensors, meta)
        self.pruned = bool(meta.get("pruned", False))
