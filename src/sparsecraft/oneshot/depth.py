"""Depth pruning as a one-shot method: ``sparsecraft.prune(llm, 0.2, method="depth", calib=ids)``
removes round(0.2 x blocks) whole blocks (or exactly ``blocks=n``), those with the lowest Block
Influence on the calibration data (ShortGPT; :mod:`sparsecraft.structure.depth`)."""

from __future__ import annotations

from typing import Any

from sparsecraft.oneshot.base import ONESHOT, StructuralPruner


@ONESHOT.register("depth")
class DepthPruning(StructuralPruner):
    """Remove the blocks whose output is most similar to their input (Block Influence)."""

    keeps_block_outputs = False

    def __init__(self, blocks: int | None = None) -> None:
        from sparsecraft.errors import SparsecraftError

        if blocks is not None and (isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0):
            raise SparsecraftError(f"depth blocks must be a whole number >= 0, got {blocks!r}")
        self.blocks = blocks

    def prune_model(self, model: Any, sparsity: float, *, targets: Any, ignore: Any, calib: Any,
                    batch_size: int, **unused: Any) -> dict:
        from sparsecraft.errors import SparsecraftError
        from sparsecraft.structure.api import prune_structure

        if targets or ignore:
            raise SparsecraftError("depth pruning chooses among all blocks; it takes no targets / ignore")
        rep = prune_structure(model, sparsity, kind="blocks", blocks=self.blocks, calib=calib, batch_size=batch_size)
        return {"blocks_removed": rep.blocks_removed, "block_scores": rep.block_scores,
                "native_config": rep.native_config}
