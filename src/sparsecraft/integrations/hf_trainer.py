"""Hugging Face ``Trainer`` callback: sparse training with any registered method.

    from sparsecraft.integrations.hf_trainer import SparsecraftCallback
    cb = SparsecraftCallback(method="rigl", sparsity=0.9, distribution="erk")
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()
    print(sparsecraft.report(model)); cb.method.dynamics.summary()

The method is attached in ``on_train_begin`` with ``total_steps = state.max_steps`` and the
Trainer's (unwrapped) optimizer; ``on_pre_optimizer_step`` (after gradient clipping) masks
gradients / captures RigL's dense gradient, ``on_optimizer_step`` advances the method
(re-zeroes weights, updates masks, fixes optimizer state); ``on_train_end`` finalizes.
Needs ``transformers`` (extra ``sparsecraft[hf]``).
"""

from __future__ import annotations

from typing import Any

from sparsecraft.errors import MissingDependencyError

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - exercised only without transformers
    raise MissingDependencyError(
        "the Hugging Face callback needs transformers: pip install 'sparsecraft[hf]'"
    ) from None

from sparsecraft.methods import attach
from sparsecraft.methods.base import SparseMethod


class SparsecraftCallback(TrainerCallback):
    """Attach a sparse-training method to a ``transformers.Trainer`` run."""

    def __init__(self, method: str = "rigl", finalize: bool = True, **config: Any) -> None:
        self.method_name, self.config, self.do_finalize = method, config, finalize
        self.method: SparseMethod | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):  # noqa: ANN001, ANN201
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        config = {"total_steps": int(state.max_steps), **self.config}
        self.method = attach(model, inner, method=self.method_name, hooks=False, **config)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if self.method is not None:
            self.method.before_optimizer_step()

    def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if self.method is not None:
            self.method.after_optimizer_step()

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if self.method is not None and self.do_finalize:
            self.method.finalize()
