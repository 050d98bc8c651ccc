"""``sparsecraft.attach``: make any training loop sparse with one line.

    sparsity = sparsecraft.attach(model, optimizer, method="rigl", sparsity=0.9,
                                  total_steps=len(loader) * epochs)
    for x, y in loader:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()          # masks gradients, re-zeroes weights, updates masks
    sparsity.finalize()
    print(sparsecraft.report(model))

The optimizer's step pre/post hooks do the work, so the loop needs no extra call; pass
``hooks=False`` to drive it yourself with ``sparsity.step()`` after ``optimizer.step()``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.methods.base import METHODS, SparseMethod


def attach(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    method: str = "rigl",
    **config: Any,
) -> SparseMethod:
    """Build the method ``method`` (a name in ``METHODS``) with ``config`` and attach it.

    ``config`` takes the :class:`SparseMethod` arguments (``total_steps`` is required;
    ``sparsity``, ``distribution``, ``update``, ``seed``, ...) plus the method's own ones.
    """
    cls = METHODS.get(method)
    if "total_steps" not in config:
        from sparsecraft.errors import SparsecraftError

        raise SparsecraftError("attach needs total_steps= (optimizer steps in the whole run) for its schedules")
    return cls(model, optimizer, **config).attach()
