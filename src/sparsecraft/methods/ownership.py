"""One sparse-training method per optimizer and per weight.

Two methods attached to the same optimizer both hook its step and fight over the masks (the
second one silently wins); two methods on the same weight overwrite each other's mask. So
:meth:`~sparsecraft.methods.base.SparseMethod.attach` *claims* its optimizer and its target
tensors here and :meth:`~sparsecraft.methods.base.SparseMethod.detach` (also called by
``finalize()``) releases them. Claims are weak on both sides: a method or an optimizer that
is garbage-collected frees its claim, and deep copies of a model are new tensors.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

from sparsecraft.errors import SparsecraftError

#: id(claimed object: an optimizer or a weight tensor) -> (weak ref to it, weak ref to the
#: owning method). Keyed by id, not by the object: tensors compare element-wise, so they
#: cannot be dictionary keys; the object's weak reference guards against id reuse.
_OWNERS: dict[int, tuple[weakref.ref, weakref.ref]] = {}


def owner(obj: Any) -> Any:
    """The attached method that claimed ``obj``, or None."""
    entry = _OWNERS.get(id(obj))
    if entry is None or entry[0]() is not obj:
        return None
    method = entry[1]()
    return method if method is not None and getattr(method, "_attached", False) else None


def claim(method: Any, optimizer: torch.optim.Optimizer | None, params: Sequence[torch.Tensor],
          names: Sequence[str]) -> None:
    """Claim ``optimizer`` and ``params`` for ``method``; raise (claiming nothing) if another
    attached method holds any of them."""
    if optimizer is not None:
        other = owner(optimizer)
        if other is not None and other is not method:
            raise SparsecraftError(
                f"this optimizer already drives the attached sparse method {other.name!r}; "
                "call its finalize() or detach() first (one method per optimizer)"
            )
    for param, name in zip(params, names):
        other = owner(param)
        if other is not None and other is not method:
            raise SparsecraftError(
                f"weight {name!r} is already managed by the attached sparse method "
                f"{other.name!r}; call its finalize() or detach() first (one method per weight)"
            )
    _prune_dead()
    ref = weakref.ref(method)
    for obj in ([optimizer] if optimizer is not None else []) + list(params):
        _OWNERS[id(obj)] = (weakref.ref(obj), ref)


def release(method: Any) -> None:
    """Drop every claim held by ``method``."""
    for key, (_, ref) in list(_OWNERS.items()):
        if ref() is method:
            del _OWNERS[key]
    _prune_dead()


def _prune_dead() -> None:
    for key, (obj, ref) in list(_OWNERS.items()):
        if obj() is None or ref() is None:
            del _OWNERS[key]
