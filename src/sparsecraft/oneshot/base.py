"""The one-shot pruner interface and its registry.

A one-shot pruner turns one weight (its (out, in) row view, float32) plus the statistics of its
input into a keep-mask and, for reconstruction methods, updated weights. The orchestration
(which layers, in what order, with what calibration data) lives in
:mod:`sparsecraft.oneshot.api` and :mod:`sparsecraft.oneshot.blockwise`; the maths of each method
lives in its own module.
"""

from __future__ import annotations

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import NM, Pattern, PerRow, Unstructured, fast_lowest_k_mask, parse_pattern
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

    def prune(
        self, w: torch.Tensor, stats: InputStats | None, pattern: Pattern, sparsity: float
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        raise NotImplementedError


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
