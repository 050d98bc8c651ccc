"""Static sparse training: the mask is chosen once at attach time and never changes.

The default is random pruning at initialisation with ERK per-layer densities ("The
Unreasonable Effectiveness of Random Pruning", Liu et al. 2022; ERK from Evci et al. 2020,
ALGORITHMS.md "Static sparse"). Any criterion works instead (``criterion="magnitude"``,
``"saliency"`` with ``data=`` batches for SNIP, ...), with any distribution and pattern.
``from_model=True`` keeps the masks the model already carries (e.g. the shared mask of a
sparse-model-soup ingredient) and only enforces them during training.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import MASK_SUFFIX
from sparsecraft.methods.base import METHODS, SparseMethod


@METHODS.register("static")
class Static(SparseMethod):
    """Static sparse training: fixed mask from init (random ERK by default, or any criterion)."""

    default_update = {"every": 1, "start": 0, "stop": 0}  # never updates

    def __init__(self, model, optimizer=None, *, from_model: bool = False, **kw: Any) -> None:  # noqa: ANN001
        if kw.get("criterion") is None:
            kw["criterion"] = {"type": "random", "seed": int(kw.get("seed", 0))}
        super().__init__(model, optimizer, **kw)
        self.from_model = from_model

    def initial_masks(self) -> dict[str, torch.Tensor]:
        if not self.from_model:
            return super().initial_masks()
        out = {}
        for t in self.targets:
            mask = getattr(t.module, t.param_name + MASK_SUFFIX, None)
            if mask is None:
                raise SparsecraftError(f"from_model=True but {t.name!r} carries no mask")
            out[t.name] = mask.clone()
        return out
