"""PyTorch Lightning callback: sparse training with any registered method.

    from sparsecraft.integrations.lightning import SparsecraftLightningCallback
    trainer = lightning.Trainer(max_epochs=20, callbacks=[SparsecraftLightningCallback("rigl", sparsity=0.9)])

Lightning runs forward/backward inside ``optimizer.step(closure)``, so the optimizer's own
step hooks would fire before the gradients exist; this callback drives the method by hand:
``on_before_optimizer_step`` (gradients ready, before the update) masks gradients / captures
RigL's dense gradient, and ``on_train_batch_end`` advances the method once per optimizer step
(``trainer.global_step`` increased; gradient accumulation safe). Attached in
``on_train_start`` with ``total_steps = trainer.estimated_stepping_batches``. Needs
``lightning`` (or ``pytorch_lightning``); tested only where it is installed.
"""

from __future__ import annotations

from typing import Any

from sparsecraft.errors import MissingDependencyError

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - depends on the environment
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError:
        raise MissingDependencyError(
            "the Lightning callback needs lightning: pip install lightning (with your torch)"
        ) from None

from sparsecraft.methods import attach
from sparsecraft.methods.base import SparseMethod


class SparsecraftLightningCallback(Callback):
    """Attach a sparse-training method to a Lightning ``Trainer`` run."""

    def __init__(self, method: str = "rigl", finalize: bool = True, **config: Any) -> None:
        super().__init__()
        self.method_name, self.config, self.do_finalize = method, config, finalize
        self.method: SparseMethod | None = None
        self._last_step = 0

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        if self.method is not None:
            return
        optimizer = trainer.optimizers[0]
        total = int(trainer.estimated_stepping_batches)
        config = {"total_steps": total, **self.config}
        self.method = attach(pl_module, optimizer, method=self.method_name, hooks=False, **config)
        self._last_step = int(trainer.global_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
        if self.method is not None:
            self.method.before_optimizer_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.method is not None and trainer.global_step > self._last_step:
            self._last_step = int(trainer.global_step)
            self.method.after_optimizer_step()

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if self.method is not None and self.do_finalize:
            self.method.finalize()
