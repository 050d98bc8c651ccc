"""Magnitude pruning, one matrix at a time (the baseline of SparseGPT and Wanda).

score_ij = |W_ij|; unstructured: the floor(s * numel) smallest of the whole matrix go;
N:M: the M - N smallest of every group of M consecutive inputs of a row go. No calibration
data, no weight update.
"""

from __future__ import annotations

import torch

from sparsecraft.oneshot.base import ONESHOT, OneShotPruner, fast_lowest_k_mask
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import NM, Pattern, PerRow, Unstructured, count_to_prune


def magnitude_mask(w: torch.Tensor, pattern: Pattern, sparsity: float) -> torch.Tensor:
    """Keep-mask of the (out, in) matrix ``w`` under ``pattern`` by |w|."""
    if type(pattern) is Unstructured:  # same result as pattern.mask, without a full sort
        return fast_lowest_k_mask(w.abs(), count_to_prune(sparsity, w.numel()))
    return pattern.mask(w.abs(), sparsity)


@ONESHOT.register("magnitude")
class Magnitude(OneShotPruner):
    """|W| per matrix (or per row / per N:M group)."""

    needs_calibration = False
    patterns = (Unstructured, NM, PerRow)

    def prune(self, w: torch.Tensor, stats: InputStats | None, pattern: Pattern, sparsity: float):
        return None, magnitude_mask(w, pattern, sparsity)
