"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

Target sparsity on the cubic polynomial schedule (ALGORITHMS.md "Polynomial"):

    s_t = s_i + (s_f - s_i) * (1 - (1 - p)^3),   p = clip((t - t0) / (t1 - t0), 0, 1),

and the mask is updated every ``every`` steps between t0 and t1 (and exactly at t1, so the
final sparsity is always reached): the lowest-|w| weights are pruned, already-pruned weights
stay pruned (monotone masks). ``window="journey"`` sets t0 = 25% and t1 = 75% of training,
the near-optimal window of "The Journey Matters" (Jin et al. 2025); the default window is
t0 = 0, t1 = 75% (the last quarter trains at full sparsity). ``start``/``end`` take steps
(ints) or fractions of ``total_steps`` (floats).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods.base import METHODS, SparseMethod, resolve_step
from sparsecraft.schedules import Polynomial, UpdateRule

WINDOWS = {"journey": (0.25, 0.75), "default": (0.0, 0.75), "zhu-gupta": (0.0, 0.75)}


@dataclass(frozen=True)
class _WindowRule(UpdateRule):
    """Every ``every`` steps in [start, stop) and also exactly at ``final``."""

    final: int = 0

    def should_update(self, step: int) -> bool:
        return step == self.final or super().should_update(step)


@METHODS.register("gmp")
class GMP(SparseMethod):
    """Gradual magnitude pruning on the cubic schedule (Zhu & Gupta 2017)."""

    default_distribution = "uniform"

    def __init__(
        self,
        model,  # noqa: ANN001
        optimizer=None,  # noqa: ANN001
        *,
        total_steps: int,
        sparsity: Any = 0.9,
        initial_sparsity: float = 0.0,
        window: str | None = None,
        start: int | float | None = None,
        end: int | float | None = None,
        every: int = 100,
        power: float = 3.0,
        **kw: Any,
    ) -> None:
        if window is not None and window not in WINDOWS:
            raise SparsecraftError(f"unknown gmp window {window!r}; allowed: {', '.join(WINDOWS)}")
        w0, w1 = WINDOWS[window or "default"]
        t0 = resolve_step(w0 if start is None else start, total_steps) or 0
        t1 = resolve_step(w1 if end is None else end, total_steps)
        assert t1 is not None
        if not 0 <= t0 <= t1:
            raise SparsecraftError(f"gmp needs 0 <= start <= end, got start={t0}, end={t1}")
        if isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool):
            sparsity = Polynomial(float(sparsity), float(initial_sparsity), t0, max(t1, t0), power)
        kw.pop("update", None)
        super().__init__(model, optimizer, total_steps=total_steps, sparsity=sparsity, **kw)
        self.update_rule = _WindowRule(every=int(every), start=t0, stop=t1 + 1, final=t1)
        self.window = (t0, t1)

    def compute_masks(self, step: int):  # noqa: ANN201
        return self.plan(self.target_sparsity(step))
