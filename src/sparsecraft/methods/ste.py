"""``ste``: N:M training with the plain straight-through estimator.

Zhou et al. (2021), "Learning N:M Fine-grained Structured Sparse Neural Networks From
Scratch", the STE baseline (ALGORITHMS.md, "N:M training"): the dense weight ``W`` is kept and
trained; forward uses ``W * E`` with ``E`` the N:M mask of the largest ``|w|`` along the input
dimension, recomputed at every forward (after ``W`` changed); backward passes the gradient of
``W * E`` to ``W`` unchanged::

    W_f = W * E,        dL/dW = dL/dW_f

Usage::

    method = sparsecraft.attach(model, opt, method="ste", pattern="2:4",
                                total_steps=T, ignore=["features.0"])
    ...train...
    method.finalize()      # W <- W * E: plain weights exactly N:M

Options: ``finetune_steps`` (int or fraction) of final hard-mask fine-tune, ``skip_unfit``.
"""

from __future__ import annotations

from sparsecraft.methods.base import METHODS
from sparsecraft.methods.nm_common import NMMethod


@METHODS.register("ste")
class STE(NMMethod):
    """N:M straight-through estimator: forward W*E (mask per forward), gradient to W as is."""

    lambda_w_default = 0.0
