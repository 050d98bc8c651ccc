"""The library's one training loop: deterministic optimizer steps on any model and batch stream.

:func:`run_steps` is the loop. A step ``t`` sets the learning rate to ``lr_fn(t)``, takes the
batch ``batch_at(t)``, computes ``loss, logs = loss_of(model, batch)``, back-propagates, clips
the global gradient norm (``grad_clip`` > 0), steps the optimizer and calls ``after_update``
(e.g. the auxiliary-loss-free router bias update of :mod:`sparsecraft.moe`). Because the batch
and the learning rate are pure functions of the step, a run resumed from a checkpoint continues
bit for bit. Two drivers use it:

* :func:`train_epoch` -- one epoch over in-memory tensors (the vision ``train`` job): batches
  are index slices shuffled by a generator seeded with ``(seed, epoch)``, loss = cross-entropy
  (+ the sparse method's regulariser); per-step wall times are recorded with a flag telling
  whether the method updated its masks (overhead measurements).
* :func:`train_steps` -- a step-counted run (the ``lm-train`` job, benchmarks): evaluation
  every ``eval_every`` steps, checkpoints through :mod:`sparsecraft.training.state` every
  ``checkpoint_every`` steps, stop after ``stop_after`` steps as if interrupted, and resume
  (:func:`resume_steps`).

The learning rate is :func:`lr_at`: optional linear warmup, then cosine to ``min_ratio`` of the
base (restarted every ``cycle`` steps, e.g. per IMP round); it needs no saved scheduler state.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods.base import SparseMethod
from sparsecraft.training.state import load_training_state, save_training_state

#: ``loss_of(model, batch) -> (loss to back-propagate, logs)``; logs hold floats, at least ``loss``
LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, Any]]]


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


def lr_at(step: int, total: int, base: float, schedule: str = "cosine", cycle: int | None = None, *,
          warmup: int = 0, min_ratio: float = 0.0) -> float:
    """Learning rate at ``step`` of ``total``: ``base * (step + 1) / warmup`` during the first
    ``warmup`` steps, then the cosine ``floor + (base - floor) * (1 + cos(pi t / T)) / 2`` with
    ``floor = base * min_ratio``, t = steps since the warmup (modulo ``cycle`` when given), T =
    ``total - warmup`` (or ``cycle``); it stays at the floor past T. ``constant`` = ``base``."""
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise SparsecraftError(f"unknown lr schedule {schedule!r}; allowed: cosine, constant")
    if step < warmup:
        return base * (step + 1) / warmup
    step, total = step - warmup, max(total - warmup, 0)
    if cycle:
        step, total = step % cycle, cycle
    floor = base * min_ratio
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


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


def run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_at: Callable[[int], Any],
    loss_of: LossFn,
    *,
    start: int,
    end: int,
    lr_fn: Callable[[int], float],
    method: SparseMethod | None = None,
    grad_clip: float = 0.0,
    before_step: Callable[[int], Any] | None = None,
    after_update: Callable[[], Any] | None = None,
    on_step: Callable[[int, dict[str, Any]], bool] | None = None,
    times: StepTimes | None = None,
    progress: bool = False,
    desc: str = "train",
    bar_initial: int = 0,
) -> int:
    """Optimizer steps ``start .. end - 1``; returns the global step after the last one run.

    ``before_step(t)`` runs before step ``t`` (e.g. a top-k schedule), ``on_step(t + 1, logs)``
    after it, with ``logs`` = the loss function's plus ``seconds`` (the step's wall time) and
    ``grad_norm`` (when clipping); it returns True to stop early. ``method`` (attached to the
    optimizer) only marks in ``times`` the steps that updated its masks. ``progress`` shows a bar
    (``desc``, counting from ``bar_initial``) with the last loss on stderr."""
    model.train()
    sync = any(p.is_cuda for p in model.parameters())
    bar = tqdm(total=bar_initial + end - start, initial=bar_initial, desc=desc, file=sys.stderr, leave=False,
               disable=not progress)
    step = start
    try:
        while step < end:
            if before_step is not None:
                before_step(step)
            for group in optimizer.param_groups:
                group["lr"] = lr_fn(step)
            t0 = time.perf_counter()
            batch = batch_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss, logs = loss_of(model, batch)
            loss.backward()
            n_updates = len(method.dynamics.updates) if method is not None else 0
            if grad_clip > 0:
                logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
            optimizer.step()
            if after_update is not None:
                after_update()
            if sync:
                torch.cuda.synchronize()
            logs["seconds"] = time.perf_counter() - t0
            if times is not None:
                times.times.append(logs["seconds"])
                times.updates.append(method is not None and len(method.dynamics.updates) != n_updates)
            step += 1
            bar.update(1)
            if progress and "loss" in logs:
                bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)
            if on_step is not None and on_step(step, logs):
                break
    finally:
        bar.close()
    return step


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
    """One epoch of :func:`run_steps` on classification tensors (cross-entropy + the method's
    regulariser); returns (mean loss, accuracy, global step after the epoch)."""
    batches = shuffled_batches(len(x), batch_size, seed, epoch)
    sums = {"loss": 0.0, "correct": 0, "seen": 0}

    def loss_of(m: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        xb, yb = x[idx], y[idx]
        out = m(xb)
        loss = F.cross_entropy(out, yb)
        if method is not None:
            loss = method.regularize(loss, inputs=xb, outputs=out, targets=yb)
        value = loss.item()
        sums["loss"] += value * len(idx)
        sums["correct"] += int((out.argmax(1) == yb).sum())
        sums["seen"] += len(idx)
        return loss, {"loss": value}

    step = run_steps(model, optimizer, lambda t: batches[t - step0], loss_of, start=step0,
                     end=step0 + len(batches), lr_fn=lr_fn, method=method, times=times, progress=progress,
                     desc=desc)  # fmt: skip
    seen = max(sums["seen"], 1)
    return sums["loss"] / seen, sums["correct"] / seen, step


@dataclass
class StepRun:
    """Where a step-counted run stands: the next step, the evaluation curve, and running sums
    (``loss``/``n``: training loss since the last evaluation; ``train_s``/``tokens``: totals)."""

    step: int = 0
    curves: list[dict[str, Any]] = field(default_factory=list)
    acc: dict[str, Any] = field(default_factory=lambda: {"loss": 0.0, "n": 0, "train_s": 0.0, "tokens": 0})
    stopped: bool = False  #: ended by ``stop_after`` before the last step

    def throughput(self) -> float:
        """Tokens (the ``tokens`` of the step logs) per second of training steps."""
        return self.acc["tokens"] / max(self.acc["train_s"], 1e-9)


def resume_steps(folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                 method: SparseMethod | None = None) -> tuple[StepRun, dict[str, Any]]:
    """Restore a :func:`train_steps` checkpoint into model, optimizer (and method); returns the
    run to continue and the checkpoint's ``extra`` (with the run's ``settings``)."""
    extra = load_training_state(folder, model, optimizer, method)
    return StepRun(int(extra["step"]), list(extra["curves"]), dict(extra["acc"])), extra


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_at: Callable[[int], Any],
    loss_of: LossFn,
    *,
    steps: int,
    lr_fn: Callable[[int], float],
    run: StepRun | None = None,
    evaluate: Callable[[int], dict[str, Any]] | None = None,
    eval_every: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    settings: dict[str, Any] | None = None,
    stop_after: int | None = None,
    method: SparseMethod | None = None,
    grad_clip: float = 0.0,
    before_step: Callable[[int], Any] | None = None,
    after_update: Callable[[], Any] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> StepRun:
    """:func:`run_steps` from ``run.step`` (0 for a new run) to ``steps``, with evaluation and
    checkpoints; returns the run (``stopped`` when ``stop_after`` ended it early).

    After every ``eval_every``-th step and the last one, a curve entry is appended: ``step``,
    ``train_loss`` (mean since the previous entry), ``lr`` (of the step just taken),
    ``tokens_per_s``, and whatever ``evaluate(step)`` returns. After every ``checkpoint_every``-th
    step, the last one, and the ``stop_after``-th step of this call, ``checkpoint`` (a folder) gets
    model, optimizer, method and torch RNG state with the run and ``settings`` as its extra
    (:func:`sparsecraft.training.state.save_training_state`)."""
    run = run if run is not None else StepRun()
    start = run.step

    def on_step(step: int, logs: dict[str, Any]) -> bool:
        acc = run.acc
        acc["train_s"] += logs["seconds"]
        acc["loss"] += logs["loss"]
        acc["n"] += 1
        acc["tokens"] += int(logs.get("tokens", 0))
        run.step = step
        last = step == steps
        if last or (eval_every and step % eval_every == 0):
            entry = {"step": step, "train_loss": acc["loss"] / max(acc["n"], 1), "lr": lr_fn(step - 1),
                     "tokens_per_s": run.throughput()}
            run.curves.append({**entry, **(evaluate(step) if evaluate is not None else {})})
            acc["loss"], acc["n"] = 0.0, 0
        run.stopped = stop_after is not None and step >= start + stop_after and not last
        if checkpoint is not None and (last or run.stopped or (checkpoint_every and step % checkpoint_every == 0)):
            extra = {"step": step, "curves": run.curves, "acc": acc, "settings": settings}
            save_training_state(checkpoint, model, optimizer, method, extra)
        return run.stopped

    run_steps(model, optimizer, batch_at, loss_of, start=start, end=steps, lr_fn=lr_fn, method=method,
              grad_clip=grad_clip, before_step=before_step, after_update=after_update, on_step=on_step,
              progress=progress, desc=desc, bar_initial=start)  # fmt: skip
    return run


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
