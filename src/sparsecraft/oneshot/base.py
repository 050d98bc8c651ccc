"""The one-shot pruner interface and its registry.

A one-shot pruner turns one weight (its (out, in) row view, float32) plus the statistics of its
input into a keep-mask and, for reconstruction methods, updated weights. The orchestration
(which layers, in what order, with what calibration data) lives in
:mod:`sparsecraft.oneshot.api` and :mod:`sparsecraft.oneshot.blockwise`; the maths of each method
lives in its own module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import NM, Pattern, PerRow, Unstructured, fast_lowest_k_mask, parse_pattern
from sparsecraft.quant.embedding import quantize_embeddings
from sparsecraft.quant.grid import QuantSpec
from sparsecraft.quant.state import QuantState
from sparsecraft.registry import Registry

ONESHOT: Registry[type[OneShotPruner]] = Registry("one-shot method", package="sparsecraft.oneshot")


class OneShotPruner:
    """Base class. ``prune(W, stats, pattern, sparsity) -> (new W or None, keep mask)``."""

    needs_calibration = True
    needs_hessian = False
    #: pattern kinds this method accepts
    patterns: tuple[type[Pattern], ...] = (Unstructured, NM)

    def check_pattern(self, pattern: Pattern) -> Pattern:
        pattern = parse_pattern(pattern)
        if not isinstance(pattern, self.patterns):
            allowed = ", ".join(sorted({p.registry_name for p in self.patterns}))  # type: ignore[attr-defined]
            raise SparsecraftError(
                f"{self.registry_name} cannot prune with pattern {pattern.spec()!r}; "  # type: ignore[attr-defined]
                f"allowed: {allowed} (N:M as e.g. '2:4')"
            )
        return pattern

    def check_sparsity(self, sparsity: float, overrides: list[float]) -> None:
        """Refuse a sparsity the method cannot produce before any work starts."""

    def prune(
        self, w: torch.Tensor, stats: InputStats | None, pattern: Pattern, sparsity: float
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        raise NotImplementedError

    # -- quantizing methods (GPTQ, SparseGPT's joint mode, GQSA) --------------------------
    quant: QuantSpec | None = None  #: the grid kept weights are quantized to, if any
    last_quant: QuantState | None = None  #: scales chosen by the last ``prune`` call

    def check_layer(self, rows: int, cols: int, name: str, dtype: torch.dtype = torch.float32) -> None:
        """Refuse a layer before any work starts (one line naming it); e.g. a quantization
        group that does not divide its inputs."""
        if self.quant is not None:
            self.quant.check_layer(cols, name)
            if dtype != torch.float32:
                raise SparsecraftError(
                    f"layer {name!r} is {str(dtype).removeprefix('torch.')}: quantization needs float32 weights "
                    "(the dequantized values s*(q-z) are exact in float32 only); load the model in float32"
                )

    def pop_quant(self) -> QuantState | None:
        """The quantization of the layer just pruned (``None`` if not quantized), once."""
        out, self.last_quant = self.last_quant, None
        return out

    def finish(self, model: nn.Module) -> dict[str, Any]:
        """After every block: quantize the embedding / LM head when ``quant.embedding`` asks
        for it; returns what to add to the report's ``info``."""
        if self.quant is None:
            return {}
        info: dict[str, Any] = {"quantize": self.quant.to_dict()}
        if self.quant.embedding is not None:
            info["quantized_embeddings"] = quantize_embeddings(model, self.quant, self.quant.embedding)
        return info


class StructuralPruner(OneShotPruner):
    """A one-shot method that removes whole structures (the model gets smaller shapes) instead of
    masking weights: :meth:`prune_model` works on the whole model; ``sparsecraft.prune`` returns the
    report of the new shapes (:mod:`sparsecraft.oneshot.structural`)."""

    structural = True
    accepts_criterion = False  #: scores structures with a criterion (magnitude, wanda, taylor)
    distributions: tuple[str, ...] = ("uniform",)
    keeps_block_outputs = True  #: block outputs stay comparable with the dense model's (SquareHead recovery)

    def prune_model(self, model, sparsity: float, *, criterion, distribution: str, targets, ignore, calib,
                    loss_fn, batch_size: int, progress: bool) -> dict:  # noqa: ANN001
        raise NotImplementedError

    def prune(self, w, stats, pattern, sparsity):  # noqa: ANN001, ANN201
        raise SparsecraftError(f"{self.registry_name} removes structures from a whole model; call "  # type: ignore[attr-defined]
                               "sparsecraft.prune(model, ...)")


def make_pruner(name: str, **kwargs) -> OneShotPruner:
    cls = ONESHOT.get(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise SparsecraftError(f"bad options for one-shot method {name!r}: {e}") from None


__all__ = ["ONESHOT", "NM", "OneShotPruner", "StructuralPruner", "PerRow", "Unstructured", "fast_lowest_k_mask",
           "make_pruner"]
