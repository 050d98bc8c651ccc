"""Weights for the kernel tests."""

from __future__ import annotations

import torch


def sparse_weight(out: int, inp: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    return w * (torch.rand(out, inp, generator=g) >= sparsity)


def two_four_weight(out: int, inp: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g).reshape(out, -1, 4)
    keep = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, w.abs().topk(2, -1).indices, True)
    return (w * keep).reshape(out, inp)
