"""Shared Fashion-MNIST pieces of the lab experiments that train small MLPs (no registered experiment here).

Data (Xiao et al. 2017, read by :func:`sparsecraft.data.fashion_mnist.load_fashion_mnist`, flattened
to 784 and normalised): :func:`fashion_random` draws a seeded random training subset and the first test
images; :func:`fashion_balanced` draws class-balanced subsets of chosen classes. Models and training:
:func:`mlp` (Linear-ReLU stacks, seeded init); :func:`train_classifier` (the library's deterministic
loop, :func:`sparsecraft.training.loop.train_epoch`: Adam, cosine learning rate, optionally a sparse
training method attached); :func:`fit` (Adam with fixed hard masks -- pruned weights stay zero through
:func:`sparsecraft.masks.apply_masks` after every step -- an optional regulariser, or gradient ascent
for unlearning); :func:`accuracy`. They keep the lab's Fashion-MNIST experiments at a scale that runs
in minutes on one core.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.data.fashion_mnist import load_fashion_mnist
from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import apply_masks
from sparsecraft.methods.base import SparseMethod
from sparsecraft.training.loop import evaluate, lr_at, shuffled_batches, train_epoch

Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

def fashion_random(n_train: int, n_test: int, seed: int) -> Data:
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


def balanced_indices(y: torch.Tensor, per_class: int, classes: Sequence[int], seed: int) -> torch.Tensor:
    """``per_class`` random indices of every class in ``classes`` (seeded), in shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in classes:
        idx = torch.nonzero(y == c).flatten()
        if len(idx) < per_class:
            raise SparsecraftError(f"class {c} has {len(idx)} examples, fewer than the {per_class} asked for")
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    out = torch.cat(picks)
    return out[torch.randperm(len(out), generator=gen)]


def fashion_balanced(train_per_class: int, test_per_class: int, classes: Sequence[int] = tuple(range(10)),
                     seed: int = 0, path: str | None = None) -> Data:
    """(x_train, y_train, x_test, y_test): flattened, normalised, class-balanced subsets."""
    x, y, xt, yt = load_fashion_mnist(path, flatten=True)
    tr = balanced_indices(y, train_per_class, classes, seed)
    te = balanced_indices(yt, test_per_class, classes, seed + 1)
    return x[tr], y[tr], xt[te], yt[te]


def mlp(sizes: Sequence[int], seed: int, bias: bool = True) -> nn.Sequential:
    """Linear-ReLU-...-Linear with the layer widths ``sizes`` (input first), seeded init."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, seed: int,
        batch_size: int = 64, extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
        sign: float = 1.0, max_steps: int | None = None) -> int:
    """Adam on cross-entropy (``sign=-1``: gradient *ascent*), keeping the model's masks hard.

    ``extra_loss(model)`` is added to the signed loss (a regulariser). Returns the steps taken."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    steps = 0
    model.train()
    for epoch in range(epochs):
        for idx in shuffled_batches(len(x), batch_size, seed, epoch):
            if max_steps is not None and steps >= max_steps:
                return steps
            opt.zero_grad(set_to_none=True)
            loss = sign * F.cross_entropy(model(x[idx]), y[idx])
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            loss.backward()
            opt.step()
            apply_masks(model)
            steps += 1
    return steps


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy (nan on an empty set)."""
    if len(x) == 0:
        return float("nan")
    was = model.training
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean())
    model.train(was)
    return acc
