"""Sparse-training methods: one module per method, each registered in ``METHODS``.

Every module of this package is imported by :func:`discover_methods`, so adding a method is
one new file with ``@METHODS.register("name")`` on a :class:`SparseMethod` subclass.
"""

from __future__ import annotations

import importlib
import pkgutil

from sparsecraft.methods.base import METHODS, SparseMethod

_SKIP = {"base", "attach", "forward", "optimizer_state", "ownership", "step_hooks", "distributed"}


def discover_methods() -> None:
    """Import every method module so its registration runs."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SKIP and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


from sparsecraft.methods.attach import attach  # noqa: E402

__all__ = ["METHODS", "SparseMethod", "attach", "discover_methods"]
