"""The feed-forward blocks a :class:`~sparsecraft.moe.model.SparseLM` layer can use, by name.

``FFN`` is the registry (``dense``, ``moe``, ``stem``; each in its own module, discovered on first
lookup). Every entry is an ``nn.Module`` with ``forward(x, token_ids)`` (``x``: (..., d_model);
``token_ids``: the matching (...) ids, used by token-indexed blocks, ignored by the others) and a
``from_config(config, layer)`` constructor.

``dense`` is the SwiGLU FFN of Llama (Shazeer 2020, "GLU Variants Improve Transformer"):
``down(silu(gate(x)) * up(x))``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.registry import Registry

FFN: Registry[type[nn.Module]] = Registry("ffn", package="sparsecraft.moe", title="feed-forward blocks")


def check_positive(name: str, value: Any, allow_zero: bool = False) -> int:
    """``value`` as an int >= 1 (>= 0 with ``allow_zero``), else a one-line error naming it."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SparsecraftError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


@FFN.register("dense")
class SwiGLU(nn.Module):
    """Dense SwiGLU feed-forward block: down(silu(gate(x)) * up(x)) (Llama's MLP)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        check_positive("d_model", d_model)
        check_positive("d_ff", d_ff)
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    @classmethod
    def from_config(cls, config: Any, layer: int) -> SwiGLU:
        return cls(config.d_model, config.d_ff)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
