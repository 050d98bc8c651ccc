"""Small helpers for the sparse-training tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))


def batches(n: int, seed: int = 0, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 12, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch) -> None:  # noqa: ANN001
    opt.zero_grad()
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    opt.step()


def nonzeros(model: nn.Module) -> list[int]:
    return [int(torch.count_nonzero(m.weight)) for m in model if isinstance(m, nn.Linear)]
