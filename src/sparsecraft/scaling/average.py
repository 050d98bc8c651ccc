"""Average parameter count over training ("The Journey Matters", Jin et al. 2025).

The average-parameter law replaces ``N`` in the Chinchilla form by

    Nbar = N_dense_other + N_prunable * (1/T) * sum_{t=0..T-1} (1 - s_t)

where ``s_t`` is the target sparsity of the pruning schedule at step ``t`` (any
:func:`sparsecraft.schedules.make_schedule` spec) and ``T`` the number of training steps.
For the cubic (GMP) schedule pruning from 25% to 75% of training, the average prunable density
is 1 - 0.625 s_f (0.4375 at s_f = 0.9): 0 sparsity for the first quarter, a mean of 0.75 s_f
over the ramp (half of training), s_f over the last quarter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsecraft.errors import SparsecraftError
from sparsecraft.schedules import make_schedule


def average_density(schedule: Any, total_steps: int) -> float:
    """Mean of ``1 - s_t`` over steps ``0 .. total_steps - 1`` of a sparsity schedule."""
    if int(total_steps) < 1:
        raise SparsecraftError(f"total_steps must be >= 1, got {total_steps}")
    sched = make_schedule(schedule)
    s = np.fromiter((sched.value(t) for t in range(int(total_steps))), dtype=float, count=int(total_steps))
    if np.any((s < 0) | (s > 1)):
        raise SparsecraftError("the schedule leaves [0, 1]; a sparsity schedule is needed")
    return float(np.mean(1.0 - s))


def average_param_count(schedule: Any, total_steps: int, prunable_params: float, dense_params: float = 0.0) -> float:
    """Nbar: the parameter count averaged over training.

    Args:
        schedule: the sparsity schedule of the prunable weights (a number = constant sparsity).
        total_steps: training length in steps.
        prunable_params: parameters the schedule prunes.
        dense_params: parameters that stay dense (embeddings, norms, kept-dense layers).
    """
    if prunable_params < 0 or dense_params < 0:
        raise SparsecraftError("parameter counts must be >= 0")
    return float(dense_params + prunable_params * average_density(schedule, total_steps))


def gmp_schedule(final: float, total_steps: int, start_frac: float = 0.25, end_frac: float = 0.75) -> dict[str, Any]:
    """The cubic schedule spec found near-optimal by Jin et al. (prune from 25% to 75%)."""
    return {
        "type": "polynomial",
        "final": float(final),
        "start": int(start_frac * total_steps),
        "end": int(end_frac * total_steps),
        "power": 3,
    }
