"""Self-attention blocks of :class:`~sparsecraft.moe.model.SparseLM`, by name (``ATTENTION``).

``standard``: causal multi-head attention with rotary position embeddings (Su et al. 2021, RoFormer;
the rotate-half form of Llama), no biases, ``F.scaled_dot_product_attention``.

``gated``: the same with a sigmoid gate on every head's output (Qiu et al. 2025), in
:mod:`sparsecraft.moe.attention_gated`.

This registry is the hook for other attention variants: a class with ``from_config(config, layer)``
and ``forward(x) -> x``-shaped output, registered as ``@ATTENTION.register("name")``, is selected
with ``SparseLMConfig(attention="name", attention_options={...})``; ``attention_options`` reach its
``from_config`` through the config, and an optional ``check_options(options)`` lets
``SparseLMConfig.validate`` refuse bad options before anything is built.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.registry import Registry

ATTENTION: Registry[type[nn.Module]] = Registry("attention", package="sparsecraft.moe", title="attention blocks")


def rope_tables(seq_len: int, head_dim: int, theta: float, device: torch.device | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of shape (seq_len, head_dim) for rotate-half RoPE."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


@ATTENTION.register("standard")
class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with RoPE (Llama style, no biases)."""

    def __init__(self, d_model: int, n_heads: int, rope_theta: float = 10000.0) -> None:
        super().__init__()
        if n_heads < 1 or d_model % n_heads or (d_model // n_heads) % 2:
            raise SparsecraftError(f"d_model={d_model} must split into n_heads={n_heads} heads of even width")
        self.n_heads, self.head_dim, self.rope_theta = n_heads, d_model // n_heads, float(rope_theta)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self._rope: tuple[int, torch.device, torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """Refuse ``attention_options`` (the standard block has none); called by ``SparseLMConfig.validate``."""
        if options:
            raise SparsecraftError(f"attention 'standard' takes no options, got {sorted(options)}")

    @classmethod
    def from_config(cls, config: Any, layer: int) -> CausalSelfAttention:
        cls.check_options(config.attention_options)
        return cls(config.d_model, config.n_heads, config.rope_theta)

    def _tables(self, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rope is None or self._rope[0] < t or self._rope[1] != device:
            cos, sin = rope_tables(max(t, 64), self.head_dim, self.rope_theta, device)
            self._rope = (cos.shape[0], device, cos, sin)
        return self._rope[2][:t], self._rope[3][:t]

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries and keys (rotary applied) and values, each (batch, heads, tokens, head_dim)."""
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = self._tables(t, x.device)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """The attention output per head, (batch, tokens, heads, head_dim), before ``o_proj``."""
        q, k, v = self.qkv(x)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.heads(x).reshape(x.shape))
