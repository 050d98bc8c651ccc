"""SET: Sparse Evolutionary Training (Mocanu et al. 2018), with the RigL paper's schedule.

Every DeltaT = 100 steps until 75% of training, each layer drops the k = floor(f(t) * active)
smallest-|w| weights and regrows k positions chosen uniformly at random among the inactive
ones (including just-dropped positions); f(t) is the cosine drop fraction with alpha = 0.3.
See :mod:`sparsecraft.methods.dynamic` for the exact update and ALGORITHMS.md.
"""

from __future__ import annotations

import torch

from sparsecraft.methods.base import METHODS
from sparsecraft.methods.dynamic import DynamicSparse
from sparsecraft.targets import Target


@METHODS.register("set")
class SET(DynamicSparse):
    """SET: drop smallest |w|, regrow at random (Mocanu et al. 2018)."""

    def grow_scores(self, target: Target) -> torch.Tensor:
        return torch.rand(target.shape, generator=self.generator).to(target.param.device)
