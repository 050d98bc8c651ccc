"""SliceGPT as a one-shot method: ``sparsecraft.prune(llm, 0.25, method="slicegpt", calib=ids)``.

The maths lives in :mod:`sparsecraft.structure.slicegpt` (fold the RMSNorm scales, PCA rotation
per block from calibration activations, slice the hidden size); ``sparsity`` is the fraction of
the hidden size sliced. Options: ``embeddings`` (``"keep"``: tied embedding / head untouched,
the default; ``"slice"``: the reference layout, rotated and sliced embedding with an untied
head) and ``round_to`` (8: the sliced width is a multiple of it).
"""

from __future__ import annotations

from typing import Any

from sparsecraft.oneshot.base import ONESHOT, StructuralPruner
from sparsecraft.oneshot.blockwise import batched


@ONESHOT.register("slicegpt")
class SliceGPT(StructuralPruner):
    """Rotate every block by PCA of its calibration signals and slice the hidden size (SliceGPT)."""

    keeps_block_outputs = False

    def __init__(self, embeddings: str = "keep", round_to: int = 8) -> None:
        from sparsecraft.errors import SparsecraftError
        from sparsecraft.structure.slicegpt import EMBEDDINGS

        if embeddings not in EMBEDDINGS:
            raise SparsecraftError(f"slicegpt embeddings must be one of {', '.join(EMBEDDINGS)}, got {embeddings!r}")
        self.embeddings, self.round_to = embeddings, round_to

    def prune_model(self, model: Any, sparsity: float, *, calib: Any, batch_size: int, progress: bool,
                    **unused: Any) -> dict:
        from sparsecraft.oneshot.api import _bar
        from sparsecraft.structure.slicegpt import slice_gpt

        if unused.get("targets") or unused.get("ignore"):
            from sparsecraft.errors import SparsecraftError

            raise SparsecraftError("slicegpt slices every block of the model; it takes no targets / ignore")
        batches = batched(calib, batch_size) if calib is not None else []
        return slice_gpt(model, sparsity, batches, embeddings=self.embeddings, round_to=self.round_to,
                         progress=_bar("slicegpt blocks", progress))
