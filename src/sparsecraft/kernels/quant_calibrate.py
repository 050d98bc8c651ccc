"""``auto`` for quantized layers: the quantized kernel a layer runs with, measured on this machine.

Candidates: ``dense`` (``nn.Linear`` on the dequantized float weight), ``quant-dense`` (the dense
quantized kernel) and the sparse quantized kernels that can hold the layer (``quant-bitmap``;
``quant-group`` when the zeros come in groups). The rule is :func:`sparsecraft.kernels.calibrate.choose_backend`'s
with both dense options as the reference: a sparse quantized kernel is used only when it takes at
most 0.9x the time of the fastest of ``dense`` and ``quant-dense`` -- so ``auto`` is never slower
than the dense quantized kernel (within the timing noise the margin absorbs).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch
from torch import nn

from sparsecraft.kernels.backends import get_backend
from sparsecraft.kernels.calibrate import Decision, MeasureFn, choose_backend
from sparsecraft.kernels.timing import time_blocks

QUANT_DENSE = ("dense", "quant-dense")
QUANT_SPARSE = ("quant-bitmap", "quant-group")


def quant_candidates(linear: nn.Module) -> tuple[list[str], dict[str, str]]:
    """(backends that can run quantized ``linear``, {name: why not} for the others)."""
    ok, why = ["dense"], {}
    for name in QUANT_DENSE[1:] + QUANT_SPARSE:
        reason = get_backend(name).supports_linear(linear)  # type: ignore[attr-defined]
        if reason:
            why[name] = reason
        else:
            ok.append(name)
    return ok, why


@torch.no_grad()
def measure_quant(linear: nn.Linear, batch: int, names: Sequence[str], rounds: int = 5, block: int = 20,
                  block_s: float = 0.02) -> dict[str, float]:
    """Seconds per forward of ``linear`` on ``batch`` rows with each backend (block-wise timing,
    the fastest block median of each, as :func:`sparsecraft.kernels.calibrate.measure_backends`)."""
    from sparsecraft.kernels.sparse_linear import SparseLinear, effective_weight

    x = torch.randn(batch, linear.in_features)
    calls = {}
    for name in names:
        if name == "dense":
            layer = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
            layer.weight.copy_(effective_weight(linear))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        else:
            layer = SparseLinear.from_linear(linear, name)
        calls[name] = lambda layer=layer: layer(x)
    blocks = time_blocks(calls, rounds=rounds, block=block, warmup=2, block_s=block_s)
    return {k: min(statistics.median(b) for b in v) for k, v in blocks.items()}


def choose_quant_backend(linear: nn.Linear, batch: int = 1, measure: MeasureFn | None = None,
                         margin: float = 0.10) -> Decision:
    """The backend quantized ``linear`` runs with at ``batch`` rows (module docstring)."""
    from sparsecraft.kernels.sparse_linear import effective_weight

    names, why = quant_candidates(linear)

    def real(weight: torch.Tensor, b: int, ns: Sequence[str]) -> dict[str, float]:
        return measure_quant(linear, b, ns)

    bias = linear.bias.detach() if linear.bias is not None else None
    decision = choose_backend(effective_weight(linear), batch=batch, candidates=names,
                              measure=measure or real, margin=margin, bias=bias)
    if why:
        decision.reason += " (" + "; ".join(f"{k}: {v}" for k, v in why.items()) + ")"
    return decision
