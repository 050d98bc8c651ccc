"""sparsecraft: sparse neural networks in PyTorch.

Prune a model in one shot, train it sparse, measure exactly what you got, store it small and
run it fast. The main entry points::

    import sparsecraft
    rep = sparsecraft.prune(model, 0.9, pattern="unstructured", criterion="magnitude",
                            distribution="erk", keep_dense=["classifier"])
    print(sparsecraft.report(model))
    sparsecraft.save(model, "model.safetensors")
    sparsecraft.load("model.safetensors", fresh_model)
"""

from sparsecraft.checkpoint import load, save
from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import apply_masks, masked_params, remove_masks, set_mask
from sparsecraft.pruning import prune
from sparsecraft.report import SparsityReport, report

__version__ = "0.1.0"

__all__ = [
    "SparsecraftError",
    "SparsityReport",
    "apply_masks",
    "load",
    "masked_params",
    "prune",
    "remove_masks",
    "report",
    "save",
    "set_mask",
]
