"""``SparseLinear``: a drop-in for ``nn.Linear`` whose weight is stored packed.

``SparseLinear.from_linear(linear, backend)`` packs the (masked) weight of an ``nn.Linear``
with one of the registered backends (:mod:`sparsecraft.kernels.backends`) and computes
``y = x W^T + b`` exactly like ``F.linear`` (same call, any number of leading batch dims,
bias or not), up to float summation order. The packed tensors are buffers, so ``state_dict``,
``.to()`` and ``copy.deepcopy`` work. It is an inference module: no gradient flows to the
packed weight.

``backend="auto"`` measures the candidates on this machine for ``batch`` rows
(:func:`sparsecraft.kernels.calibrate.choose_backend`) and keeps the decision in ``self.decision``.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.kernels.backends import Backend, Packed, get_backend
from sparsecraft.kernels.calibrate import Decision, MeasureFn, choose_backend
from sparsecraft.masks import MASK_SUFFIX
from sparsecraft.quant.state import get_quant

PREFIX = "packed_"


def effective_weight(linear: nn.Module) -> torch.Tensor:
    """The weight forward uses: ``weight * weight_mask`` when a hard mask is attached."""
    w = linear.weight.detach()
    mask = getattr(linear, "weight" + MASK_SUFFIX, None)
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        w = w.masked_fill(~mask, 0)
    return w


class SparseLinear(nn.Module):
    """``nn.Linear`` with a packed weight; ``backend`` names how it is packed and multiplied."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        backend: str,
        packed: Packed,
        bias: torch.Tensor | None = None,
        decision: Decision | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.backend = backend
        self._impl: Backend = get_backend(backend)
        for key, t in packed.items():
            if not key.startswith("_"):
                self.register_buffer(PREFIX + key, t)
        # "_"-prefixed entries are objects that cannot be buffers (e.g. CUDA semi-structured)
        self._extra: Packed = {k: t for k, t in packed.items() if k.startswith("_")}
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self.decision = decision
        self._cache: Packed | None = None
        self.sparsecraft_forward_weights = {"weight": self.dense_weight}

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        backend: str = "auto",
        batch: int = 1,
        measure: MeasureFn | None = None,
    ) -> SparseLinear:
        """Pack ``linear``'s (masked) weight with ``backend`` ("auto": measured choice)."""
        if not isinstance(linear, nn.Linear):
            raise SparsecraftError(f"SparseLinear.from_linear needs an nn.Linear, got {type(linear).__name__}")
        weight = effective_weight(linear)
        decision = None
        if backend == "auto":
            bias = linear.bias.detach() if linear.bias is not None else None
            if get_quant(linear) is not None:
                from sparsecraft.kernels.quant_calibrate import choose_quant_backend

                decision = choose_quant_backend(linear, batch=batch, measure=measure)
            else:
                decision = choose_backend(weight, batch=batch, measure=measure, bias=bias)
            backend = decision.backend
        impl = get_backend(backend)
        avail, reason = impl.available()
        quantized = getattr(impl, "quantized", False)  # packs from the layer's codes and scales
        reason = reason if not avail else (impl.supports_linear(linear) if quantized else impl.supports(weight))
        if reason:
            raise SparsecraftError(f"backend {backend!r} cannot run this layer: {reason}")
        packed = impl.pack_linear(linear) if quantized else impl.pack(weight)
        return cls(linear.in_features, linear.out_features, backend, packed, linear.bias, decision)

    def _packed(self) -> Packed:
        if self._cache is None:
            self._cache = {
                name[len(PREFIX):]: buf for name, buf in self.named_buffers(recurse=False)
                if name.startswith(PREFIX)
            }
            self._cache.update(self._extra)
        return self._cache

    def _apply(self, fn, recurse: bool = True):  # .to()/.float()/...: drop cached helpers
        self._cache = None
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise RuntimeError(
                f"SparseLinear: input has {x.shape[-1]} features, expected {self.in_features}"
            )
        packed = self._cache if self._cache is not None else self._packed()
        with torch.no_grad():
            y = self._impl.matmul(packed, x.reshape(-1, self.in_features), self.out_features)
            if self.bias is not None:
                y = y.add_(self.bias)  # y is a fresh tensor from every backend
        return y.reshape(*x.shape[:-1], self.out_features) if x.dim() != 2 else y

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense (out, in) tensor (for checks and sparsity reports)."""
        return self._impl.to_dense(self._packed(), (self.out_features, self.in_features))

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weight."""
        return self._impl.nbytes(self._packed())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, backend={self.backend}"
        )
