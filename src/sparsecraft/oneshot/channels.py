"""Channel removal as a one-shot method: ``sparsecraft.prune(llm, 0.25, method="channels",
criterion="wanda", calib=ids)`` removes that fraction of every removable channel group (the
intermediate channels of every MLP, the channels of every conv group), scored by ``criterion``
(magnitude, wanda, taylor) aggregated per channel (:mod:`sparsecraft.structure.importance`).
``distribution="global"`` ranks all channels together instead of per group."""

from __future__ import annotations

from typing import Any

from sparsecraft.oneshot.base import ONESHOT, StructuralPruner


@ONESHOT.register("channels")
class ChannelRemoval(StructuralPruner):
    """Remove the least important channels of every dependency group (MLP / conv channels)."""

    accepts_criterion = True
    distributions = ("uniform", "global")

    def prune_model(self, model: Any, sparsity: float, *, criterion: Any, distribution: str, targets: Any,
                    ignore: Any, calib: Any, loss_fn: Any, batch_size: int, progress: bool) -> dict:
        from sparsecraft.structure.api import prune_structure

        rep = prune_structure(model, sparsity, kind="channels", criterion=criterion or "magnitude",
                              distribution=distribution, targets=targets, ignore=ignore, calib=calib,
                              loss_fn=loss_fn, batch_size=batch_size)
        return {"removed": rep.removed, "native_config": rep.native_config}
