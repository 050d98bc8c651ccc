"""Sparse-training methods: one module per method, each registered in ``METHODS``.

Adding a method is one new file in this package with ``@METHODS.register("name")`` on a
:class:`SparseMethod` subclass; ``METHODS`` imports the package's modules on first lookup
(:meth:`sparsecraft.registry.Registry.discover`).
"""

from __future__ import annotations

from sparsecraft.methods.attach import attach
from sparsecraft.methods.base import METHODS, SparseMethod

__all__ = ["METHODS", "SparseMethod", "attach"]
