"""Sparse Model Soups from a recipe (job ``train`` with a ``soup:`` section).

The dense model is first trained for ``epochs`` (the recipe's loop, no method); then
:func:`sparsecraft.methods.soups.sparse_model_soups` runs ``phases`` prune-retrain phases: each
prunes globally by magnitude (q = 1-(1-s)^(1/P) of the remaining weights), retrains one copy
per ingredient (its own ``seed`` -> batch order, and ``weight_decay``) for ``epochs_per_phase``
epochs with the mask fixed (static method, ``from_model=True``), and merges them (uniform or
greedy by accuracy on a held-out validation split of the training data, ``validation``
examples), BatchNorm recalibrated on a few training batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.methods import attach
from sparsecraft.methods.soups import sparse_model_soups
from sparsecraft.training.loop import OptimSettings, evaluate, lr_at, make_optimizer, train_epoch


def run_soup(
    model: nn.Module,
    data: tuple[torch.Tensor, ...],
    *,
    sparsity: float,
    phases: int,
    ingredients: list[dict[str, Any]],
    mode: str,
    epochs_per_phase: int,
    batch_size: int,
    optim: OptimSettings,
    validation: int,
    progress: bool = False,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Run SMS on an already trained ``model``; ``data`` = (x_train, y_train) minus validation."""
    x, y = data[0], data[1]
    xv, yv = x[-validation:], y[-validation:]
    xtr, ytr = x[:-validation], y[:-validation]
    spe = -(-len(xtr) // batch_size)
    total = spe * epochs_per_phase

    def train_fn(m: nn.Module, phase: int, seed: int = 0, weight_decay: float | None = None) -> None:
        s = OptimSettings(
            **{**optim.__dict__, "weight_decay": optim.weight_decay if weight_decay is None else weight_decay}
        )
        opt = make_optimizer(m, s)
        method = attach(m, opt, method="static", from_model=True, total_steps=total)
        step = 0
        for epoch in range(epochs_per_phase):
            _, _, step = train_epoch(m, opt, method, xtr, ytr, batch_size=batch_size, seed=seed * 1000 + phase,
                                     epoch=epoch, step0=step, lr_fn=lambda t: lr_at(t, total, s.lr, s.schedule),
                                     progress=progress)  # fmt: skip
        method.finalize()

    def validate(m: nn.Module) -> float:
        return evaluate(m, xv, yv)[1]

    bn_batches = [xtr[i : i + batch_size] for i in range(0, min(len(xtr), 10 * batch_size), batch_size)]
    return sparse_model_soups(model, train_fn, sparsity=sparsity, phases=phases, ingredients=ingredients,
                              mode=mode, validate=validate, bn_batches=bn_batches)  # fmt: skip
