"""Exact sparsity statistics of a model.

The true sparsity of a layer is the count of zeros in the weight that forward actually uses:
for hard masks that is the parameter itself (a drifted weight shows up as lower sparsity: the
report never trusts the mask alone). A module that computes its forward weight differently
(e.g. straight-through N:M training keeps dense weights and multiplies by the mask in forward)
registers ``module.sparsecraft_forward_weights = {param_name: callable() -> Tensor}``.
Modules whose weight is not a parameter at all -- e.g. a converted
:class:`~sparsecraft.kernels.SparseLinear`, which stores it packed in buffers -- are listed
from that hook too (pattern ``packed:<backend>``) and their weights count in the model totals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import masked_params
from sparsecraft.targets import check_regexes, find_targets, name_matches


@dataclass
class LayerStats:
    name: str
    shape: tuple[int, ...]
    pattern: str
    target: float
    sparsity: float
    nonzeros: int
    numel: int


@dataclass
class SparsityReport:
    """Per-layer statistics plus totals over the listed layers and over all parameters."""

    layers: list[LayerStats] = field(default_factory=list)
    model_numel: int = 0
    model_nonzeros: int = 0
    #: what the producer adds (``prune``: method, criterion, pattern, requested sparsity, wall time,
    #: per-layer sparsities, OWL outlier ratios, ...); JSON-serialisable
    info: dict = field(default_factory=dict)

    @property
    def masked(self) -> list[LayerStats]:
        """The layers that carry a mask (pattern is not ``dense``)."""
        return [layer for layer in self.layers if layer.pattern != "dense"]

    @property
    def numel(self) -> int:
        """Weights in the masked layers (the ones a sparsity target applies to)."""
        return sum(layer.numel for layer in self.masked)

    @property
    def nonzeros(self) -> int:
        return sum(layer.nonzeros for layer in self.masked)

    @property
    def sparsity(self) -> float:
        """True sparsity over the masked layers (0.0 when nothing is masked)."""
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0

    @property
    def listed_sparsity(self) -> float:
        """True sparsity over every listed layer, kept-dense ones included."""
        n = sum(layer.numel for layer in self.layers)
        return 1.0 - sum(layer.nonzeros for layer in self.layers) / n if n else 0.0

    @property
    def model_sparsity(self) -> float:
        """Sparsity over every parameter of the model (biases, norms, embeddings included)."""
        return 1.0 - self.model_nonzeros / self.model_numel if self.model_numel else 0.0

    def layer(self, name: str) -> LayerStats:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            **({"info": self.info} if self.info else {}),
            "layers": [{**asdict(l), "shape": list(l.shape)} for l in self.layers],
            "total": {"numel": self.numel, "nonzeros": self.nonzeros, "sparsity": self.sparsity},
            "listed": {
                "numel": sum(l.numel for l in self.layers),
                "nonzeros": sum(l.nonzeros for l in self.layers),
                "sparsity": self.listed_sparsity,
            },
            "model": {
                "numel": self.model_numel,
                "nonzeros": self.model_nonzeros,
                "sparsity": self.model_sparsity,
            },
        }

    def to_markdown(self) -> str:
        lines = [
            "| layer | shape | pattern | target | true sparsity | nonzeros |",
            "|---|---|---|---|---|---|",
        ]
        for l in self.layers:
            shape = "x".join(map(str, l.shape))
            lines.append(f"| {l.name} | {shape} | {l.pattern} | {l.target:.4f} | {l.sparsity:.4f} | {l.nonzeros} |")
        lines.append(f"| **total (masked layers)** | {self.numel} | | | {self.sparsity:.4f} | {self.nonzeros} |")
        if len(self.masked) != len(self.layers):
            listed = sum(l.nonzeros for l in self.layers)
            lines.append(f"| **total (all listed layers)** | | | | {self.listed_sparsity:.4f} | {listed} |")
        lines.append(
            f"| **model (all params)** | {self.model_numel} | | | {self.model_sparsity:.4f} | {self.model_nonzeros} |"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def forward_weight(module: nn.Module, param_name: str) -> torch.Tensor:
    hooks = getattr(module, "sparsecraft_forward_weights", None)
    if hooks and param_name in hooks:
        return hooks[param_name]()
    return getattr(module, param_name)


def _fraction_zero(nonzeros: int, numel: int) -> float:
    return 1.0 - nonzeros / numel if numel else 0.0


def _selected(targets: Sequence[str], ignore: Sequence[str], mname: str, name: str) -> bool:
    if targets and not name_matches(targets, mname, name):
        return False
    return not name_matches(ignore, mname, name)


def _packed_rows(model: nn.Module, targets: Sequence[str], ignore: Sequence[str]) -> dict[str, LayerStats]:
    """Rows for forward weights that are not parameters (e.g. SparseLinear's packed weight)."""
    rows: dict[str, LayerStats] = {}
    for mname, module in model.named_modules():
        hooks = getattr(module, "sparsecraft_forward_weights", None) or {}
        for pname, fn in hooks.items():
            if isinstance(getattr(module, pname, None), nn.Parameter):
                continue  # a parameter: handled by masked_params / find_targets
            name = f"{mname}.{pname}" if mname else pname
            if not _selected(targets, ignore, mname, name):
                continue
            w = fn()
            nz = int(torch.count_nonzero(w))
            pattern = f"packed:{getattr(module, 'backend', type(module).__name__)}"
            rows[name] = LayerStats(name, tuple(w.shape), pattern, 0.0, _fraction_zero(nz, w.numel()), nz, w.numel())
    return rows


@torch.no_grad()
def report(
    model: nn.Module,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    unmasked: bool = True,
) -> SparsityReport:
    """Exact per-layer statistics of every masked weight (and, with ``unmasked``, of every other
    prunable weight, shown with pattern ``dense``), restricted to the layers matching ``targets``
    and not ``ignore`` (regexes, as in :func:`sparsecraft.prune`); the model totals always count
    every parameter."""
    if not isinstance(model, nn.Module):
        raise SparsecraftError(f"report() expects a torch.nn.Module, got {type(model).__name__}")
    targets = check_regexes(targets, "targets")
    ignore = check_regexes(ignore, "ignore")
    rows: dict[str, LayerStats] = {}
    params: dict[str, torch.Tensor] = {}  # row name -> the parameter it describes
    masked: set[int] = set()  # every masked tensor, listed or not
    for mp in masked_params(model):  # one row per tensor, even when modules share it
        masked.add(id(mp.param))
        if not _selected(targets, ignore, mp.name.rsplit(".", 1)[0], mp.name):
            continue
        w = forward_weight(mp.module, mp.param_name)
        nz = int(torch.count_nonzero(w))
        meta = mp.meta
        rows[mp.name] = LayerStats(
            mp.name, tuple(w.shape), meta.pattern, meta.target, _fraction_zero(nz, w.numel()), nz, w.numel()
        )
        params[mp.name] = mp.param
    if unmasked:
        for t in find_targets(model, targets=targets, ignore=ignore):  # one target per tensor
            if id(t.param) in masked:
                continue
            w = forward_weight(t.module, t.param_name)
            nz = int(torch.count_nonzero(w))
            rows[t.name] = LayerStats(t.name, t.shape, "dense", 0.0, _fraction_zero(nz, w.numel()), nz, w.numel())
            params[t.name] = t.param
    packed = _packed_rows(model, targets, ignore)  # always: these weights are not parameters
    rows.update(packed)
    # keep module order
    order: list[str] = []
    for mname, module in model.named_modules():
        names = [n for n, _ in module.named_parameters(recurse=False)]
        names += list(getattr(module, "sparsecraft_forward_weights", None) or {})
        for pname in names:
            name = f"{mname}.{pname}" if mname else pname
            if name in rows and name not in order:
                order.append(name)
    order += [n for n in rows if n not in order]
    total = nonzeros = 0
    model_params = set()
    for p in model.parameters():  # shared parameters once (storage, not uses)
        total += p.numel()
        nonzeros += int(torch.count_nonzero(p))
        model_params.add(id(p))
    for s in packed.values():  # weights stored outside parameters
        total += s.numel
        nonzeros += s.nonzeros
    # soft (STE-style) forward weights: use their counts for the model total too
    for name, p in params.items():
        if id(p) in model_params:
            nonzeros += rows[name].nonzeros - int(torch.count_nonzero(p))
    return SparsityReport([rows[n] for n in order], total, nonzeros)
