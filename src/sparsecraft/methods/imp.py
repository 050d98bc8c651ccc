"""Iterative magnitude pruning with weight rewinding (Han et al. 2015; Frankle & Carbin 2019,
"The Lottery Ticket Hypothesis"; Frankle et al. 2020, "Linear Mode Connectivity and the
Lottery Ticket Hypothesis" for rewinding to an early step).

Training is split into ``rounds + 1`` phases of ``total_steps // (rounds + 1)`` steps: a
dense phase, then after each phase i = 1..P the weights are pruned *globally* by magnitude
to density (1 - s)^(i/P), i.e. each round removes q = 1 - (1 - s)^(1/P) of the remaining
weights (ALGORITHMS.md "Sparse Model Soups"), the surviving weights are rewound to their
values at ``rewind`` ("init" = attach time, or a step k of the first phase; a float is a
fraction of the phase) and the optimizer state is reset. ``lr_cycle_steps`` tells a
training loop to restart its learning-rate schedule every phase. For sparse model soups
(m retrained copies per phase, averaged) see :mod:`sparsecraft.methods.soups`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods.base import METHODS, SparseMethod, resolve_step
from sparsecraft.methods.optimizer_state import zero_state
from sparsecraft.schedules import UpdateRule


@METHODS.register("imp")
class IMP(SparseMethod):
    """Iterative magnitude pruning, P global rounds, rewinding to init or an early step."""

    default_distribution = "global"

    def __init__(
        self,
        model,  # noqa: ANN001
        optimizer=None,  # noqa: ANN001
        *,
        total_steps: int,
        sparsity: float = 0.9,
        rounds: int = 3,
        rewind: str | int | float = "init",
        **kw: Any,
    ) -> None:
        if int(rounds) < 1:
            raise SparsecraftError(f"imp needs rounds >= 1, got {rounds}")
        if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
            raise SparsecraftError(f"imp sparsity must be a number in [0, 1), got {sparsity!r}")
        self.final_sparsity, self.rounds = float(sparsity), int(rounds)
        self.phase_steps = int(total_steps) // (self.rounds + 1)
        if self.phase_steps < 1:
            raise SparsecraftError(f"total_steps={total_steps} is too short for {rounds} rounds")
        if rewind == "init":
            self.rewind_step = 0
        elif isinstance(rewind, (int, float)) and not isinstance(rewind, bool):
            self.rewind_step = resolve_step(rewind, self.phase_steps) or 0
        else:
            raise SparsecraftError(f"imp rewind must be 'init' or a step, got {rewind!r}")
        if self.rewind_step >= self.phase_steps:
            raise SparsecraftError("imp rewind step must fall inside the first (dense) phase")
        kw.pop("update", None)
        super().__init__(model, optimizer, total_steps=total_steps, sparsity=0.0, **kw)
        self.update_rule = UpdateRule(
            every=self.phase_steps, start=self.phase_steps, stop=self.phase_steps * self.rounds + 1
        )
        self.lr_cycle_steps = self.phase_steps
        self.round = 0
        self.rewind_state: dict[str, torch.Tensor] = {}

    def round_sparsity(self, i: int) -> float:
        """Total sparsity after round i: 1 - (1 - s)^(i/P)."""
        return 1.0 - (1.0 - self.final_sparsity) ** (min(i, self.rounds) / self.rounds)

    def target_sparsity(self, step: int | None = None) -> float:
        return self.round_sparsity(self.round)

    def _snapshot(self) -> None:
        self.rewind_state = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def attach(self) -> IMP:
        super().attach()
        if self.rewind_step == 0:
            self._snapshot()
        return self

    def post_step(self) -> None:
        if self.step_count == self.rewind_step and not self.rewind_state:
            self._snapshot()

    def compute_masks(self, step: int) -> dict[str, torch.Tensor]:
        self.round += 1
        return self.plan(self.round_sparsity(self.round))

    @torch.no_grad()
    def after_optimizer_step(self) -> dict[str, Any] | None:
        entry = super().after_optimizer_step()
        if entry is not None:  # a pruning round happened: rewind and reset the optimizer
            for n, p in self.model.named_parameters():
                if n in self.rewind_state:
                    p.copy_(self.rewind_state[n])
                if self.optimizer is not None:
                    zero_state(self.optimizer, p, torch.ones_like(p, dtype=torch.bool))
            self._reapply()
        return entry

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = super().extra_state()
        tensors.update({f"rewind.{k}": v for k, v in self.rewind_state.items()})
        return tensors, {**meta, "round": self.round}

    def load_extra_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        super().load_extra_state(tensors, meta)
        self.rewind_state = {k[7:]: v.clone() for k, v in tensors.items() if k.startswith("rewind.")}
        self.round = int(meta.get("round", 0))
