"""Per-layer expert-load statistics.

From the token counts c_1..c_E an MoE layer's experts received (every forward adds to them; see
:class:`~sparsecraft.moe.layer.MoEFFN`), with mean m = sum(c) / E:

* ``fractions``: c_i / sum(c) (sums to 1);
* ``cv``: coefficient of variation, population std(c) / m (0 = perfectly balanced; one expert
  taking everything gives sqrt(E - 1));
* ``min_load`` / ``max_load``: min(c) / m and max(c) / m (Sigma-MoE-Tiny's Fig. 2a plots the
  deviation of these from 1);
* ``dead``: experts that received no token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class ExpertLoad:
    """Load statistics of one MoE layer (see the module docstring)."""

    layer: str
    tokens: int  #: token-to-expert assignments counted (tokens x k)
    fractions: list[float]
    cv: float
    min_load: float
    max_load: float
    dead: int

    def to_dict(self) -> dict:
        return asdict(self)


def load_from_counts(counts: torch.Tensor, layer: str = "") -> ExpertLoad:
    """:class:`ExpertLoad` of a vector of per-expert token counts."""
    c = counts.detach().double().cpu()
    total = float(c.sum())
    e = c.numel()
    if total == 0:
        return ExpertLoad(layer, 0, [0.0] * e, math.nan, math.nan, math.nan, e)
    mean = total / e
    std = math.sqrt(float(((c - mean) ** 2).mean()))
    return ExpertLoad(layer, int(round(total)), (c / total).tolist(), std / mean, float(c.min()) / mean,
                      float(c.max()) / mean, int((c == 0).sum()))


def moe_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every sparsecraft MoE layer of ``model`` (modules with ``load_counts``)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "load_counts", None), torch.Tensor)]


def expert_load(model: nn.Module) -> list[ExpertLoad]:
    """The load statistics of every MoE layer of ``model`` since the last :func:`reset_expert_load`."""
    return [load_from_counts(m.load_counts, n) for n, m in moe_layers(model)]


def reset_expert_load(model: nn.Module) -> None:
    """Zero the token counters of every MoE layer."""
    for _, m in moe_layers(model):
        m.load_counts.zero_()
