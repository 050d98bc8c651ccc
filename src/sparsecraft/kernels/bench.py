"""Benchmark a model dense vs. converted: per-layer and end-to-end latency.

:func:`bench_model` runs one forward to capture the real input of every ``nn.Linear``, converts
a deep copy with :func:`sparsecraft.kernels.convert`, then times, side by side block by block
(:func:`sparsecraft.kernels.timing.time_calls`: rounds of warm-up + timed block per call, order
rotated, median of the block medians), each layer (dense ``nn.Linear`` vs. its replacement, on
its captured input) and the whole forward (dense model vs. converted model), and checks the outputs agree.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparsecraft.kernels.calibrate import MeasureFn
from sparsecraft.kernels.convert import ConvertReport, convert
from sparsecraft.kernels.timing import time_calls


@dataclass
class ModelBench:
    """Result of :func:`bench_model` (times in milliseconds)."""

    convert: ConvertReport
    layers: list[dict[str, Any]] = field(default_factory=list)
    dense_ms: float = 0.0
    sparse_ms: float = 0.0
    max_abs_diff: float = 0.0

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms if self.sparse_ms else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "end_to_end": {"dense_ms": self.dense_ms, "sparse_ms": self.sparse_ms,
                           "speedup": self.speedup, "max_abs_diff": self.max_abs_diff},
            "layers": self.layers,
            "convert": self.convert.to_dict(),
        }

    def table(self) -> str:
        lines = [f"{'layer':40s} {'shape':>12s} {'sparsity':>8s} {'backend':>12s} "
                 f"{'dense ms':>9s} {'sparse ms':>9s} {'speedup':>7s}"]
        for r in self.layers:
            shape = "x".join(str(s) for s in r["shape"])
            lines.append(f"{r['name'][:40]:40s} {shape:>12s} {r['sparsity']:8.1%} {r['backend']:>12s} "
                         f"{r['dense_ms']:9.3f} {r['sparse_ms']:9.3f} {r['speedup']:6.2f}x")
        lines.append(f"{'end to end':40s} {'':>12s} {'':>8s} {'':>12s} {self.dense_ms:9.3f} "
                     f"{self.sparse_ms:9.3f} {self.speedup:6.2f}x   (max |diff| {self.max_abs_diff:.2e})")
        return "\n".join(lines)


def _call(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    if isinstance(inputs, Mapping):
        return lambda: model(**inputs)
    if isinstance(inputs, tuple):
        return lambda: model(*inputs)
    return lambda: model(inputs)


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0])
    raise TypeError(f"cannot compare model outputs of type {type(out).__name__}")


@torch.no_grad()
def capture_linear_inputs(model: nn.Module, inputs: Any) -> dict[str, torch.Tensor]:
    """The input each ``nn.Linear`` of ``model`` receives in one forward on ``inputs``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, name=name: seen.setdefault(name, args[0].detach().clone())))
    try:
        _call(model, inputs)()
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def bench_model(
    model: nn.Module,
    inputs: Any,
    backend: str = "auto",
    batch: int | None = None,
    repeats: int = 20,
    measure: MeasureFn | None = None,
    targets: list[str] | None = None,
) -> ModelBench:
    """Time ``model`` dense vs. converted on ``inputs`` (a tensor, tuple or dict of kwargs).

    ``batch``: rows per Linear call used for the per-layer decisions (default: the rows of the
    captured inputs, e.g. batch x sequence length).
    """
    model.eval()
    acts = capture_linear_inputs(model, inputs)
    if batch is None:
        rows = [a.reshape(-1, a.shape[-1]).shape[0] for a in acts.values()]
        batch = max(rows) if rows else 1
    sparse = copy.deepcopy(model)
    rep = convert(sparse, backend=backend, batch=batch, measure=measure, targets=targets)
    result = ModelBench(rep)
    dense_mods, sparse_mods = dict(model.named_modules()), dict(sparse.named_modules())
    for lr in rep.layers:
        x = acts.get(lr.name)
        if x is None:
            continue
        d, s = dense_mods[lr.name], sparse_mods[lr.name]
        t = time_calls({"dense": lambda d=d, x=x: d(x), "sparse": lambda s=s, x=x: s(x)},
                       repeats=repeats, warmup=2)
        result.layers.append({
            "name": lr.name, "shape": list(lr.shape), "sparsity": lr.sparsity, "backend": lr.backend,
            "reason": lr.reason, "dense_ms": t["dense"] * 1e3, "sparse_ms": t["sparse"] * 1e3,
            "speedup": t["dense"] / t["sparse"],
        })
    dense_call, sparse_call = _call(model, inputs), _call(sparse, inputs)
    ref, got = _first_tensor(dense_call()), _first_tensor(sparse_call())
    result.max_abs_diff = float((ref.float() - got.float()).abs().max()) if ref.numel() else 0.0
    t = time_calls({"dense": dense_call, "sparse": sparse_call}, repeats=repeats, warmup=2)
    result.dense_ms, result.sparse_ms = t["dense"] * 1e3, t["sparse"] * 1e3
    return result
