"""Shared Fashion-MNIST pieces of the lab experiments that train small MLPs (no experiment here).

:func:`fashion_subset` loads the Debian Fashion-MNIST files through
:func:`sparsecraft.data.fashion_mnist.load_fashion_mnist` and draws a seeded training subset;
:func:`train_classifier` trains a model on it with the library's deterministic loop
(:func:`sparsecraft.training.loop.train_epoch`, Adam, cosine learning rate), optionally with a
sparse-training method already attached, and returns the test accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sparsecraft.data.fashion_mnist import load_fashion_mnist
from sparsecraft.methods.base import SparseMethod
from sparsecraft.training.loop import evaluate, lr_at, train_epoch


def fashion_subset(n_train: int, n_test: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test): ``n_train`` random training images (seeded), the first
    ``n_test`` test images; flattened to 784 and normalised."""
    x, y, xt, yt = load_fashion_mnist(flatten=True)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n_train]
    return x[idx], y[idx], xt[:n_test], yt[:n_test]


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
                     *, epochs: int, lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
                     method_fn: Callable[[nn.Module, torch.optim.Optimizer, int], SparseMethod] | None = None,
                     progress: bool = False) -> tuple[float, SparseMethod | None]:
    """Train with Adam (cosine lr from ``lr``); ``method_fn(model, optimizer, total_steps)`` attaches
    a sparse method (finalized at the end). Returns (test accuracy, the method)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(x) // batch_size)
    total = epochs * steps_per_epoch
    method = method_fn(model, opt, total) if method_fn is not None else None
    step = 0
    for epoch in range(epochs):
        _, _, step = train_epoch(model, opt, method, x, y, batch_size=batch_size, seed=seed, epoch=epoch,
                                 step0=step, lr_fn=lambda s: lr_at(s, total, lr), progress=progress)
    if method is not None:
        method.finalize()
    return evaluate(model, xt, yt)[1], method
