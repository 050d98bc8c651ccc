"""Shared pieces of the small Fashion-MNIST lab experiments (no registered experiment here).

Class-balanced subsets of Fashion-MNIST (Xiao et al. 2017, read by
:func:`sparsecraft.data.fashion_mnist.load_fashion_mnist`), a plain MLP, and a training loop with
fixed hard masks (pruned weights stay zero: :func:`sparsecraft.masks.apply_masks` after every step).
They keep the unlearning, continual-learning and sparse-architecture-search experiments at a
scale that runs in minutes on one core.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import apply_masks
from sparsecraft.training.loop import shuffled_batches

Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


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


def fashion_subset(train_per_class: int, test_per_class: int, classes: Sequence[int] = tuple(range(10)),
                   seed: int = 0, path: str | None = None) -> Data:
    """(x_train, y_train, x_test, y_test): flattened, normalised, class-balanced subsets."""
    from sparsecraft.data.fashion_mnist import load_fashion_mnist

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
