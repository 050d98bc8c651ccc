"""An explicit causal softmax attention, written out from the formula, for checking the modules."""

import math

import torch

from sparsecraft.moe.attention import apply_rope, rope_tables


def explicit_heads(m: torch.nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(mask(RoPE(q) RoPE(k)^T / sqrt(d))) v per head, before o_proj: (B, T, heads, d)."""
    b, t, width = x.shape
    d = width // heads
    cos, sin = rope_tables(t, d, 10000.0)
    split = lambda w: (x @ w.t()).view(b, t, heads, d).transpose(1, 2)  # noqa: E731
    q = apply_rope(split(m.q_proj.weight), cos, sin)
    k = apply_rope(split(m.k_proj.weight), cos, sin)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    return (s.softmax(-1) @ split(m.v_proj.weight)).transpose(1, 2)
