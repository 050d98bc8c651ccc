"""A small, deterministic supervised training loop on in-memory tensors.

No DataLoader workers: batches are index slices of tensors, shuffled by a generator seeded
with ``(seed, epoch)`` so that a run resumed at an epoch boundary sees exactly the batches an
uninterrupted run sees. The learning rate is a pure function of the step (cosine, optionally
restarted every ``cycle`` steps, e.g. per IMP round), so it needs no saved scheduler state.
Per-step wall times are recorded with a flag telling whether the sparse method updated its
masks on that step (for overhead measurements).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods.base import SparseMethod


@dataclass
class OptimSettings:
    """Optimizer defaults of ANCHORS.md: SGD momentum 0.9, lr 0.1 cosine, wd 5e-4."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | constant


def make_optimizer(model: nn.Module, s: OptimSettings) -> torch.optim.Optimizer:
    if s.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    if s.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    if s.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    raise SparsecraftError(f"unknown optimizer {s.name!r}; allowed: sgd, adamw, adam")


def lr_at(step: int, total: int, base: float, schedule: str = "cosine", cycle: int | None = None) -> float:
    """Learning rate at ``step``: base * (1 + cos(pi t / T)) / 2, restarted every ``cycle``."""
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise SparsecraftError(f"unknown lr schedule {schedule!r}; allowed: cosine, constant")
    if cycle:
        step, total = step % cycle, cycle
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


@dataclass
class StepTimes:
    """Wall time of every optimizer step and whether it updated the masks."""

    times: list[float] = field(default_factory=list)
    updates: list[bool] = field(default_factory=list)

    def summary(self, skip: int = 20) -> dict[str, float]:
        t = self.times[skip:]
        plain = sorted(x for x, u in zip(t, self.updates[skip:]) if not u)
        return {
            "steps": len(self.times),
            "mean_s": sum(t) / len(t) if t else 0.0,
            "median_plain_s": plain[len(plain) // 2] if plain else 0.0,
            "mean_plain_s": sum(plain) / len(plain) if plain else 0.0,
        }


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: SparseMethod | None,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    step0: int,
    lr_fn: Callable[[int], float],
    times: StepTimes | None = None,
    progress: bool = False,
    desc: str = "epoch",
) -> tuple[float, float, int]:
    """One epoch; returns (mean loss, accuracy, global step after the epoch). ``progress`` shows a
    bar (titled ``desc``) on stderr."""
    model.train()
    step, total_loss, correct, seen = step0, 0.0, 0, 0
    batches = shuffled_batches(len(x), batch_size, seed, epoch)
    it = tqdm(batches, desc=desc, file=sys.stderr, leave=False) if progress else batches
    for idx in it:
        for group in optimizer.param_groups:
            group["lr"] = lr_fn(step)
        t0 = time.perf_counter()
        xb, yb = x[idx], y[idx]
        optimizer.zero_grad(set_to_none=True)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        if method is not None:
            loss = method.regularize(loss, inputs=xb, outputs=out, targets=yb)
        loss.backward()
        n_updates = len(method.dynamics.updates) if method is not None else 0
        optimizer.step()
        if times is not None:
            times.times.append(time.perf_counter() - t0)
            times.updates.append(method is not None and len(method.dynamics.updates) != n_updates)
        step += 1
        total_loss += loss.item() * len(idx)
        correct += int((out.argmax(1) == yb).sum())
        seen += len(idx)
    return total_loss / max(seen, 1), correct / max(seen, 1), step


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on (x, y)."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size])
        loss += F.cross_entropy(out, y[i : i + batch_size], reduction="sum").item()
        correct += int((out.argmax(1) == y[i : i + batch_size]).sum())
    model.train(was)
    return loss / len(x), correct / len(x)
