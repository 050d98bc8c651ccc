"""Gated attention for :class:`~sparsecraft.moe.model.SparseLM` (Qiu et al. 2025, "Gated Attention
for Large Language Models"; the rule of ``sparsecraft.attention.gated``, here on the library's own
RoPE attention block instead of a transformers ``LlamaAttention``):

    Y  = SDPA(Q, K, V)                  # per head, (tokens, heads, head_dim)
    Y' = Y * sigmoid(X W_g)             # X = the block's input after its RMSNorm
    out = Y' W_o

``gate: headwise`` (default): W_g maps d_model to one scalar per head (broadcast over head_dim);
``gate: elementwise``: one gate per element of every head. ``W_g`` is an ``nn.Linear`` without
bias (a prune target like the other projections); the model's N(0, init_std) initialisation
starts every gate near 0.5. Selected with ``SparseLMConfig(attention="gated",
attention_options={"gate": "elementwise"})``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.attention.gated import GATES
from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.attention import ATTENTION, CausalSelfAttention


@ATTENTION.register("gated")
class GatedSelfAttention(CausalSelfAttention):
    """Causal RoPE multi-head attention with a sigmoid output gate per head (or per element)."""

    def __init__(self, d_model: int, n_heads: int, rope_theta: float = 10000.0, gate: str = "headwise") -> None:
        super().__init__(d_model, n_heads, rope_theta)
        self.check_options({"gate": gate})
        self.gate = gate
        self.gate_proj = nn.Linear(d_model, n_heads * (self.head_dim if gate == "elementwise" else 1), bias=False)

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """Only ``gate`` (one of ``headwise``, ``elementwise``)."""
        unknown = sorted(set(options) - {"gate"})
        if unknown:
            raise SparsecraftError(f"attention 'gated' takes only the option gate, got {unknown}")
        gate = options.get("gate", "headwise")
        if gate not in GATES:
            raise SparsecraftError(f"attention 'gated': gate must be one of {', '.join(GATES)}, got {gate!r}")

    @classmethod
    def from_config(cls, config: Any, layer: int) -> GatedSelfAttention:
        cls.check_options(config.attention_options)
        return cls(config.d_model, config.n_heads, config.rope_theta, config.attention_options.get("gate", "headwise"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        gate = torch.sigmoid(self.gate_proj(x)).view(b, t, self.n_heads, -1)  # -1: 1 (headwise) or head_dim
        return self.o_proj((self.heads(x) * gate).reshape(x.shape))
