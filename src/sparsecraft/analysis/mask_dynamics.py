"""Mask dynamics: how much a sparse topology moves during training.

* Per update and per layer: ``dropped`` = kept before and pruned after, ``grown`` = pruned
  before and kept after, ``active`` = kept after (a weight dropped and regrown in the same
  update counts in neither: its mask bit did not change).
* **Sparse Architecture Divergence** (SAD; Zhou et al. 2021, "Learning N:M Fine-grained
  Structured Sparse Neural Networks From Scratch", Sec. 4): the number of connections whose
  mask state differs between two masks E_a and E_b,

      SAD_count(E_a, E_b) = || E_a XOR E_b ||_1 = sum_i |E_a,i - E_b,i|,

  the count of mask flips (a moved connection counts twice: once dropped, once grown). We
  also report it normalised, ``SAD = SAD_count / numel`` (the fraction of all positions that
  differ), which is comparable across layers and models; both are given for every update,
  relative to the previous mask and to the initial mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


def sad_count(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of positions where two masks of the same shape differ (||a XOR b||_1)."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"masks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return int(torch.count_nonzero(a.to(torch.bool) ^ b.to(torch.bool)))


def sad(
    a: torch.Tensor | Mapping[str, torch.Tensor], b: torch.Tensor | Mapping[str, torch.Tensor]
) -> float:
    """Sparse Architecture Divergence as a fraction in [0, 1]: SAD_count / numel.

    Accepts two masks, or two ``{name: mask}`` dicts over the same layers (summed)."""
    if isinstance(a, Mapping):
        assert isinstance(b, Mapping)
        if set(a) != set(b):
            raise ValueError("mask dicts cover different layers")
        n = sum(a[k].numel() for k in a)
        return sum(sad_count(a[k], b[k]) for k in a) / n if n else 0.0
    assert isinstance(b, torch.Tensor)
    return sad_count(a, b) / a.numel() if a.numel() else 0.0


def flip_counts(old: torch.Tensor, new: torch.Tensor) -> dict[str, int]:
    """dropped / grown / active counts between two masks of one layer."""
    old, new = old.to(torch.bool), new.to(torch.bool)
    return {
        "dropped": int(torch.count_nonzero(old & ~new)),
        "grown": int(torch.count_nonzero(~old & new)),
        "active": int(torch.count_nonzero(new)),
        "numel": new.numel(),
    }


@dataclass
class MaskDynamics:
    """Log of every mask update of a training run (kept by a :class:`SparseMethod`)."""

    initial: dict[str, torch.Tensor] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)

    def start(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.initial = {k: v.detach().to(torch.bool).cpu().clone() for k, v in masks.items()}

    def record(
        self,
        step: int,
        old: Mapping[str, torch.Tensor],
        new: Mapping[str, torch.Tensor],
        **info: Any,
    ) -> dict[str, Any]:
        """Log one update; returns the entry (also appended to :attr:`updates`)."""
        layers = {}
        tot = {
            "dropped": 0,
            "grown": 0,
            "active": 0,
            "numel": 0,
            "sad_count": 0,
            "sad_init_count": 0,
        }
        for name, m_new in new.items():
            m_new = m_new.detach().cpu()
            c = flip_counts(old[name].detach().cpu(), m_new)
            c["sad_count"] = sad_count(old[name].detach().cpu(), m_new)
            init = self.initial.get(name)
            c["sad_init_count"] = sad_count(init, m_new) if init is not None else 0
            layers[name] = c
            for k in tot:
                tot[k] += c[k]
        n = max(tot["numel"], 1)
        entry = {
            "step": int(step),
            **info,
            "dropped": tot["dropped"],
            "grown": tot["grown"],
            "active": tot["active"],
            "sad": tot["sad_count"] / n,
            "sad_count": tot["sad_count"],
            "sad_vs_initial": tot["sad_init_count"] / n,
            "layers": layers,
        }
        self.updates.append(entry)
        return entry

    def summary(self) -> dict[str, Any]:
        """Totals over the run, for a report."""
        return {
            "updates": len(self.updates),
            "dropped_total": sum(u["dropped"] for u in self.updates),
            "grown_total": sum(u["grown"] for u in self.updates),
            "sad_vs_initial": self.updates[-1]["sad_vs_initial"] if self.updates else 0.0,
        }

    def to_json(self) -> list[dict[str, Any]]:
        return list(self.updates)

    def load_json(self, updates: list[dict[str, Any]]) -> None:
        self.updates = list(updates)
