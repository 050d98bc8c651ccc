"""OWL: Outlier Weighed Layerwise sparsity (Yin et al., "Outlier Weighed Layerwise Sparsity
(OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity", ICML 2024).

Per block l, the outlier ratio D_l is the fraction of the block's Wanda scores
|W_ij| * ||X_j||_2 (all its pruned Linear layers together, activations from the dense model on
the calibration data) that exceed ``M`` times their mean (M = 5 by default). Blocks with more
outliers are pruned less. The ratios are mapped linearly onto [0, 2 lambda]:

    a_l = 2 lambda (D_l - min D) / (max D - min D)
    sparsity_l = target - (a_l - mean(a))

so every sparsity lies in [target - lambda', target + lambda'] with lambda' <= 2 lambda, and the
mean of the block sparsities equals the target exactly (the reference code's
``ratio - mean + (1 - sparsity)``). With blocks of equal size (any uniform stack) the mean is
also the parameter-weighted budget. lambda = 0.08 by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsecraft.errors import SparsecraftError


def outlier_ratio(scores: Sequence[torch.Tensor], m: float = 5.0) -> float:
    """Fraction of the entries of ``scores`` (concatenated) above ``m`` times their mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return int((flat > m * flat.mean()).sum()) / flat.numel()  # exact count, no float32 mean of 0/1


def owl_sparsities(ratios: Sequence[float], target: float, lam: float = 0.08) -> list[float]:
    """Per-block sparsities with mean exactly ``target`` (see the module docstring)."""
    if not 0.0 <= target <= 1.0:
        raise SparsecraftError(f"sparsity must be in [0, 1], got {target}")
    if lam < 0:
        raise SparsecraftError(f"OWL lambda must be >= 0, got {lam}")
    r = torch.tensor(list(ratios), dtype=torch.float64)
    if r.numel() == 0:
        return []
    spread = float(r.max() - r.min())
    if spread == 0.0:
        return [float(target)] * r.numel()
    a = (r - r.min()) / spread * (2.0 * lam)
    s = target - (a - a.mean())
    if float(s.min()) < 0.0 or float(s.max()) > 1.0:
        raise SparsecraftError(
            f"OWL with target {target} and lambda {lam} asks for block sparsities outside [0, 1] "
            f"({float(s.min()):.3f}..{float(s.max()):.3f}); use a smaller lambda"
        )
    return [float(x) for x in s]
