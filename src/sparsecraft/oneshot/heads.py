"""Attention-head removal as a one-shot method: ``sparsecraft.prune(llm, 0.25, method="heads")``
removes that fraction of the query heads of every attention module, grouped-query aware
(``head_mode="query"``: evenly from every key/value group; ``"kv"``: whole key/value groups),
scored by ``criterion`` (magnitude, wanda, taylor) over each head's query rows and output columns."""

from __future__ import annotations

from typing import Any

from sparsecraft.oneshot.base import ONESHOT, StructuralPruner


@ONESHOT.register("heads")
class HeadRemoval(StructuralPruner):
    """Remove the least important attention heads (grouped-query attention respected)."""

    accepts_criterion = True
    distributions = ("uniform", "global")

    def __init__(self, head_mode: str = "query") -> None:
        from sparsecraft.errors import SparsecraftError

        if head_mode not in ("query", "kv"):
            raise SparsecraftError(f"head_mode must be 'query' or 'kv', got {head_mode!r}")
        self.head_mode = head_mode

    def prune_model(self, model: Any, sparsity: float, *, criterion: Any, distribution: str, targets: Any,
                    ignore: Any, calib: Any, loss_fn: Any, batch_size: int, progress: bool) -> dict:
        from sparsecraft.structure.api import prune_structure

        rep = prune_structure(model, sparsity, kind="heads", criterion=criterion or "magnitude",
                              distribution=distribution, targets=targets, ignore=ignore, calib=calib,
                              loss_fn=loss_fn, batch_size=batch_size, head_mode=self.head_mode)
        return {"removed": rep.removed, "head_mode": self.head_mode, "native_config": rep.native_config}
