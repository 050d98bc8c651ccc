"""Wanda: Pruning by Weights and activations (Sun, Liu, Bair & Kolter, ICLR 2024).

score_ij = |W_ij| * ||X_j||_2, the norm taken over all calibration tokens of input feature j.
The comparison group is each output row: unstructured sparsity s prunes the floor(s * in)
lowest scores of every row (so 70% of 576 inputs prunes 403 per row: true sparsity 0.6997);
N:M prunes the M - N lowest of every group of M consecutive inputs of a row. No weight update.
Ties are broken by position (stable sort), like the reference's ``torch.sort(stable=True)``.
"""

from __future__ import annotations

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.base import ONESHOT, OneShotPruner
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import NM, Pattern, PerRow, Unstructured


def wanda_scores(w: torch.Tensor, col_norms: torch.Tensor) -> torch.Tensor:
    """|W| * ||X_j||_2 broadcast over the rows of the (out, in) matrix."""
    return w.abs().float() * col_norms.float().reshape(1, -1)


def wanda_mask(w: torch.Tensor, col_norms: torch.Tensor, pattern: Pattern, sparsity: float) -> torch.Tensor:
    """Keep-mask: per-row lowest scores (unstructured) or per-group (N:M)."""
    scores = wanda_scores(w, col_norms)
    if isinstance(pattern, Unstructured):
        pattern = PerRow()
    return pattern.mask(scores, sparsity)


@ONESHOT.register("wanda")
class Wanda(OneShotPruner):
    """|W| * ||X||, compared within each output row."""

    patterns = (Unstructured, NM, PerRow)

    def prune(self, w: torch.Tensor, stats: InputStats | None, pattern: Pattern, sparsity: float):
        if stats is None:
            raise SparsecraftError("wanda needs calibration statistics")
        return None, wanda_mask(w, stats.col_norms, pattern, sparsity)
