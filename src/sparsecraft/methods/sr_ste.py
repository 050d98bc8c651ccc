"""``sr-ste``: sparse-refined straight-through estimator for N:M training.

Zhou et al. (2021), "Learning N:M Fine-grained Structured Sparse Neural Networks From
Scratch", eq. (5) (ALGORITHMS.md, "N:M training"). As :mod:`~sparsecraft.methods.ste`, but the
gradient reaching the dense weight adds a decay on the *pruned* entries only::

    W_f = W * E,        dL/dW = g(W_f) + lambda_w * (1 - E) * W,     lambda_w = 2e-4

``E`` is recomputed at every forward from the current ``|W|``. The refinement term pulls
pruned weights toward zero, which reduces how often the mask flips (lower Sparse Architecture
Divergence). Unlike the reference code's ``SparseLinear``, the layer's bias is kept: only the
weight is replaced in forward.

Options: ``lambda_w`` (default 2e-4), ``finetune_steps`` (final hard-mask phase, default 0),
``skip_unfit``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods.base import METHODS
from sparsecraft.methods.nm_common import NMMethod


@METHODS.register("sr-ste")
class SRSTE(NMMethod):
    """SR-STE: gradient to dense W is g(W*E) + lambda_w * (1-E) * W (lambda_w = 2e-4)."""

    lambda_w_default = 2e-4

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        lambda_w: float = 2e-4,
        **kwargs: Any,
    ) -> None:
        if lambda_w < 0:
            raise SparsecraftError(f"sr-ste lambda_w must be >= 0, got {lambda_w}")
        super().__init__(model, optimizer, **kwargs)
        self.lambda_w = float(lambda_w)
