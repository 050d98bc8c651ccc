"""How a sparse method rides on ``torch.optim`` steps: closures and skipped steps.

:class:`~sparsecraft.methods.base.SparseMethod` registers :meth:`StepHooks._pre_step_hook`
as the optimizer's step pre-hook. Two cases need more than "call
``before_optimizer_step()`` now":

* ``optimizer.step(closure)`` (LBFGS, Lightning-style loops): the gradients of this step are
  computed *inside* the step, by the closure. The pre-hook returns a wrapped closure that runs
  the user's closure and then the gradient work (capture, modify, mask), so the optimizer sees
  masked fresh gradients. Working on the stale gradients before the step instead left the
  closure's fresh, unmasked gradients to update pruned weights.
* a step the method wants skipped (RigL's reference replaces the optimizer update by the mask
  update on update steps): every gradient of the optimizer's parameters is set aside
  (``grad = None``; every torch optimizer skips such a parameter, so neither the weight nor
  its state changes, and e.g. Adam's step counter does not advance) and put back by the
  post-hook. Works with any torch optimizer, and with framework callbacks that call
  ``before_optimizer_step()`` / ``after_optimizer_step()`` around the step themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class StepHooks:
    """Mixin of :class:`~sparsecraft.methods.base.SparseMethod` (see the module docstring)."""

    optimizer: torch.optim.Optimizer | None
    _stashed_grads: list[tuple[torch.Tensor, torch.Tensor]]

    def before_optimizer_step(self) -> None:  # implemented by SparseMethod
        raise NotImplementedError

    def _pre_step_hook(self, opt: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Optimizer step pre-hook: gradient work now, or around the closure if there is one.
        (torch passes ``step``'s positional arguments with the optimizer itself first.)"""
        pos = 1 if args and args[0] is opt else 0
        closure = kwargs["closure"] if "closure" in kwargs else (args[pos] if len(args) > pos else None)
        if closure is None:
            self.before_optimizer_step()
            return None
        wrapped = self._wrap_closure(closure)
        if "closure" in kwargs:
            return args, {**kwargs, "closure": wrapped}
        return (*args[:pos], wrapped, *args[pos + 1 :]), kwargs

    def _wrap_closure(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        def wrapped() -> Any:
            self._restore_grads()  # a closure called again (LBFGS) starts from a clean slate
            loss = closure()
            self.before_optimizer_step()
            return loss

        return wrapped

    def _stash_grads(self) -> None:
        """Set aside every gradient of the optimizer's parameters (``grad = None``)."""
        assert self.optimizer is not None
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._stashed_grads.append((p, p.grad))
                    p.grad = None

    def _restore_grads(self) -> bool:
        """Put the set-aside gradients back; True if there were any."""
        stashed, self._stashed_grads = self._stashed_grads, []
        for p, g in stashed:
            p.grad = g
        return bool(stashed)
