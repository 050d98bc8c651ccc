"""``convert(model)``: swap sparse ``nn.Linear`` layers for :class:`SparseLinear`, per layer only
where it is faster on this machine.

For every eligible ``nn.Linear`` (masked, or simply with zeros in its weight) the ``auto``
backend measures the dense calls and the sparse kernels at the given batch size
(:func:`sparsecraft.kernels.calibrate.choose_backend`) and keeps the layer dense unless a sparse kernel
is measurably faster. Layers with the same shape, sparsity (to 1%), 2:4-ness and dtype share
one measurement. Every decision -- converted or kept dense, and why -- is in the returned
:class:`ConvertReport` and logged on the ``sparsecraft.kernels`` logger; nothing is silent.

A forced backend (``backend="csr16"`` ...) converts every eligible layer with it, except those
it cannot run (reported, with a warning).

Activation sparsity: a layer inside a module that declares ``sparsecraft_input_sparsity`` (the
expected fraction of exact zeros of the input of its child ``inner``; the top-k and CETT
wrappers of :mod:`sparsecraft.activations`) is a candidate for the ``act-sparse`` backend, which
reads only the weight columns of nonzero inputs. ``auto`` measures it with inputs of that
sparsity against the dense calls (and the weight-sparse kernels when the weight itself is
sparse) under the same rule: converted only when clearly faster, never slower than dense.
``backend="act-sparse"`` converts exactly those layers.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.kernels.backends import backend_names, get_backend
from sparsecraft.kernels.calibrate import Decision, MeasureFn, choose_backend
from sparsecraft.kernels.sparse_linear import SparseLinear, effective_weight
from sparsecraft.targets import find_targets

log = logging.getLogger("sparsecraft.kernels")


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    sparsity: float
    backend: str
    reason: str
    dense_ms: float | None = None
    chosen_ms: float | None = None
    dense_bytes: int = 0
    packed_bytes: int = 0
    input_sparsity: float | None = None  #: expected zeros of the input (activation-sparse layers)

    @property
    def converted(self) -> bool:
        return not self.backend.startswith("dense") and self.backend != "(unchanged)"

    @property
    def speedup(self) -> float | None:
        return self.dense_ms / self.chosen_ms if self.dense_ms and self.chosen_ms else None


@dataclass
class ConvertReport:
    """Per-layer decisions of :func:`convert`."""

    backend: str
    batch: int
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def converted(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.converted]

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "batch": self.batch,
            "converted": len(self.converted),
            "layers": [{**asdict(x), "converted": x.converted, "speedup": x.speedup} for x in self.layers],
        }

    def __str__(self) -> str:
        lines = [f"convert(backend={self.backend}, batch={self.batch}): "
                 f"{len(self.converted)}/{len(self.layers)} layers sparse"]
        for x in self.layers:
            sp = f"{x.speedup:.2f}x" if x.speedup else "-"
            lines.append(f"  {x.name:40s} {x.sparsity:6.1%} {x.backend:12s} {sp:>7s}  {x.reason}")
        return "\n".join(lines)


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """data_ptr -> names of every parameter stored there (tied weights share one)."""
    seen: dict[int, list[str]] = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            seen.setdefault(p.data_ptr(), []).append(f"{mname}.{pname}" if mname else pname)
    return seen


def _is_24(weight: torch.Tensor) -> bool:
    if weight.shape[1] % 4:
        return False
    return int((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1).max()) <= 2


INPUT_SPARSITY_ATTR = "sparsecraft_input_sparsity"
ACT_SPARSE = "act-sparse"


def sparse_input_layers(model: nn.Module) -> dict[str, float | None]:
    """{name of a child ``inner``: expected input sparsity} for every module declaring
    ``sparsecraft_input_sparsity`` (None: sparse, fraction unknown)."""
    out: dict[str, float | None] = {}
    for name, module in model.named_modules():
        if hasattr(module, INPUT_SPARSITY_ATTR) and isinstance(getattr(module, "inner", None), nn.Module):
            value = getattr(module, INPUT_SPARSITY_ATTR)
            out[f"{name}.inner" if name else "inner"] = None if value is None else float(value)
    return out


def _decide_sparse_input(
    entry: LayerReport, weight: torch.Tensor, module: nn.Linear, backend: str, batch: int,
    min_sparsity: float, measure: MeasureFn | None, memo: dict,
) -> None:
    """The decision for a layer whose input is activation-sparse (fills ``entry``)."""
    s_in = entry.input_sparsity
    if s_in is None:
        entry.reason = "input sparsity unknown (the activation rule has no calibrated sparsity); left as nn.Linear"
        return
    if s_in < min_sparsity:
        entry.reason = f"input only {s_in:.1%} zeros (< min_sparsity {min_sparsity:.0%})"
        return
    impl = get_backend(ACT_SPARSE)
    avail, why = impl.available()
    why = why if not avail else impl.supports(weight)
    if backend == ACT_SPARSE:
        if why:
            entry.reason = f"requested backend {ACT_SPARSE} cannot run it: {why}; left as nn.Linear"
            warnings.warn(f"sparsecraft.convert: {entry.name}: {entry.reason}", RuntimeWarning, stacklevel=3)
        else:
            entry.backend, entry.reason = ACT_SPARSE, f"backend requested by the caller (input {s_in:.1%} zeros)"
        return
    from sparsecraft.kernels.calibrate import DENSE_CANDIDATES, SPARSE_CANDIDATES

    names = [ACT_SPARSE, *DENSE_CANDIDATES]
    if entry.sparsity >= min_sparsity:
        names += list(SPARSE_CANDIDATES)
    key = (entry.shape, weight.dtype, round(entry.sparsity, 2), round(s_in, 2), batch, "input")
    if key not in memo:
        bias = module.bias.detach() if module.bias is not None else None
        memo[key] = (choose_backend(weight, batch=batch, candidates=[n for n in names if n in backend_names()],
                                    measure=measure, bias=bias, input_sparsity=s_in), entry.name)
    decision, measured_on = memo[key]
    entry.backend = decision.backend
    entry.reason = f"{decision.reason} (input {s_in:.1%} zeros)"
    if measured_on != entry.name:
        entry.reason += f" (measured on {measured_on}: same shape and sparsities)"
    entry.dense_ms, entry.chosen_ms = decision.dense_ms, decision.chosen_ms


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def convert(
    model: nn.Module,
    backend: str = "auto",
    batch: int = 1,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    min_sparsity: float = 0.2,
    measure: MeasureFn | None = None,
) -> ConvertReport:
    """Swap eligible ``nn.Linear`` layers of ``model`` (in place) for :class:`SparseLinear`.

    ``backend``: ``"auto"`` (measured per layer at ``batch`` rows) or a backend name.
    ``min_sparsity``: layers with fewer zeros (in the weight; for ``act-sparse``, in the input)
    stay dense without measuring.
    ``measure``: injected timing function ``(weight, batch, names) -> {name: seconds}``.
    """
    if backend != "auto" and backend not in backend_names():
        raise SparsecraftError(f"unknown backend {backend!r}; allowed: auto, {', '.join(backend_names())}")
    report = ConvertReport(backend, batch)
    shared = _shared_weights(model)
    sparse_inputs = sparse_input_layers(model)
    memo: dict[tuple, tuple[Decision, str]] = {}
    # every module holding a target weight (a tied weight is one target with aliases)
    found = find_targets(model, targets=targets, ignore=ignore)
    holders = [h for t in found for h in [(t.module_name, t.module), *t.aliases]]
    for module_name, module in holders:
        if not isinstance(module, nn.Linear):
            continue
        weight = effective_weight(module)
        shape = (module.out_features, module.in_features)
        sparsity = float((weight == 0).sum()) / weight.numel()
        entry = LayerReport(module_name, shape, sparsity, "(unchanged)", "",
                            dense_bytes=weight.numel() * weight.element_size())
        report.layers.append(entry)
        tied = [n for n in shared.get(module.weight.data_ptr(), []) if n != f"{module_name}.weight"]
        if module_name in sparse_inputs:
            entry.input_sparsity = sparse_inputs[module_name]
        if tied:
            entry.reason = f"weight is tied to {', '.join(tied)}; left as nn.Linear"
        elif module_name in sparse_inputs and backend in ("auto", ACT_SPARSE):
            _decide_sparse_input(entry, weight, module, backend, batch, min_sparsity, measure, memo)
        elif backend == ACT_SPARSE:
            entry.reason = "its input is not activation-sparse (no top-k / threshold rule in front); left as nn.Linear"
        elif sparsity < min_sparsity:
            entry.reason = f"only {sparsity:.1%} zeros (< min_sparsity {min_sparsity:.0%})"
        elif backend == "auto":
            key = (shape, weight.dtype, round(sparsity, 2), _is_24(weight), batch)
            if key not in memo:
                bias = module.bias.detach() if module.bias is not None else None
                memo[key] = (choose_backend(weight, batch=batch, measure=measure, bias=bias), module_name)
            decision, measured_on = memo[key]
            entry.backend, entry.reason = decision.backend, decision.reason
            if measured_on != module_name:
                entry.reason += f" (measured on {measured_on}: same shape and sparsity)"
            entry.dense_ms, entry.chosen_ms = decision.dense_ms, decision.chosen_ms
        else:
            impl = get_backend(backend)
            avail, why = impl.available()
            why = why if not avail else impl.supports(weight)
            if why:
                entry.reason = f"requested backend {backend} cannot run it: {why}; left as nn.Linear"
                warnings.warn(f"sparsecraft.convert: {module_name}: {entry.reason}", RuntimeWarning,
                              stacklevel=2)
            else:
                entry.backend, entry.reason = backend, "backend requested by the caller"
        if entry.backend not in ("(unchanged)", "dense"):  # "dense" is what nn.Linear calls
            new = SparseLinear.from_linear(module, entry.backend)
            _replace(model, module_name, new)
            entry.packed_bytes = new.nbytes
        log.info("convert %s: %s (%s)", module_name, entry.backend, entry.reason)
    return report
