"""sparsecraft: sparse neural networks in PyTorch.

Prune a model in one shot, train it sparse, measure exactly what you got, store it small and
run it fast. The main entry points::

    import sparsecraft
    rep = sparsecraft.prune(model, 0.9, pattern="unstructured", criterion="magnitude",
                            distribution="erk", ignore=["classifier"])
    sparsecraft.prune(llm, 0.5, method="sparsegpt", calib=token_ids)   # block by block
    print(sparsecraft.report(model))
    sparsecraft.save(model, "model.safetensors")
    sparsecraft.load(fresh_model, "model.safetensors")
"""

from sparsecraft.errors import SparsecraftError
from sparsecraft.formats.checkpoint import load, save
from sparsecraft.masks import apply_masks, masked_params, remove_masks, set_mask
from sparsecraft.oneshot.api import prune
from sparsecraft.report import SparsityReport, report

__version__ = "0.1.0"

#: Entry points of the larger sub-packages, imported on first use so that ``import sparsecraft``
#: stays light (no transformers, no kernel build, no scipy fit machinery until asked for).
_LAZY = {
    "attach": "sparsecraft.methods",
    "convert": "sparsecraft.kernels",
    "SparseLinear": "sparsecraft.kernels",
    "encode_delta": "sparsecraft.formats",
    "apply_delta": "sparsecraft.formats",
    "fit": "sparsecraft.scaling",
    "load_fit": "sparsecraft.scaling",
    "step_law": "sparsecraft.scaling",
}


def __getattr__(name: str):  # noqa: ANN202
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparsecraft' has no attribute {name!r}")

__all__ = [
    *_LAZY,
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
