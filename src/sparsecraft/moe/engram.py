"""Engram: hashed N-gram memory fused into the residual stream (Cheng et al. 2026, "Conditional
Memory via Scalable Lookup: A New Axis of Sparsity for Large Language Models"; reference code
deepseek-ai/Engram ``engram_demo_v1.py``).

For hidden states h (B, T, d) and token ids at layer l:

1. rows = hash of the compressed 2-/3-gram ending at each position, one row per (order, head)
   (:mod:`sparsecraft.moe.engram_hash`); e = concatenation of the rows' embeddings
   (``heads`` heads of ``embed_dim / heads`` per order, all heads in one table with offsets);
2. context-aware gate: a = sigmoid(signed_sqrt(<RMSNorm(W_k e), RMSNorm(h)> / sqrt(d))), with
   signed_sqrt(x) = sign(x) sqrt(max(|x|, 1e-6));
3. v = a * W_v e;  output = v + silu(causal depthwise conv(RMSNorm(v))) (kernel ``kernel_size``,
   dilation = the largest N-gram order, as in the reference);
4. the block adds the output to the residual stream before attention.

Deterministic addressing: :meth:`Engram.addresses` gives the rows from the token ids alone, so a
table can live in host memory: fetch ``rows_needed(ids)`` and pass ``fetched=(rows, values)``.

Departures from the reference (docs/moe.md): one residual stream (the reference runs on 4
hyper-connection streams, with one key projection and norm pair per stream); multipliers and
primes are buffers saved with the model (addressing survives a checkpoint round trip).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.engram_hash import check_engram_shape, hash_ngrams, head_primes, layer_multipliers

ENGRAM_OPTIONS = ("layers", "ngram_sizes", "heads", "table_size", "embed_dim", "kernel_size", "seed", "pad_id")


class CausalDepthwiseConv(nn.Module):
    """Depthwise causal 1-D convolution over the sequence, (B, T, C) -> (B, T, C): output t sees
    inputs t, t - dilation, ..., t - (kernel - 1) dilation. Its (C, 1, kernel) weight is not an
    ``nn.Conv1d``, so it is not a prune target (a depthwise kernel has nothing to prune)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.dilation = kernel_size, dilation
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv1d's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv1d(F.pad(x.transpose(1, 2), ((self.kernel_size - 1) * self.dilation, 0)), self.weight,
                     groups=self.weight.shape[0], dilation=self.dilation)
        return y.transpose(1, 2)


def check_engram_options(vocab_size: int, ngram_sizes: Any = (2, 3), heads: Any = 4, table_size: Any = 4096,
                         embed_dim: Any = 64, kernel_size: Any = 4, pad_id: Any = 0, seed: Any = 0) -> tuple[int, ...]:
    """Validate Engram's options (one-line errors naming the value); returns the n-gram orders."""
    sizes = check_engram_shape(ngram_sizes, heads, table_size)
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < heads or embed_dim % heads:
        raise SparsecraftError(f"engram embed_dim must be a positive multiple of heads={heads}, got {embed_dim!r}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise SparsecraftError(f"engram kernel_size must be an integer >= 1, got {kernel_size!r}")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or not 0 <= pad_id < vocab_size:
        raise SparsecraftError(f"engram pad_id must be a token id in [0, {vocab_size}), got {pad_id!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SparsecraftError(f"engram seed must be an integer >= 0, got {seed!r}")
    return sizes


class Engram(nn.Module):
    """Hashed N-gram embedding lookup, gated by the hidden state, with a short causal conv."""

    def __init__(
        self,
        d_model: int,
        vocab_size: int,
        layer_id: int,
        ngram_sizes: Sequence[int] = (2, 3),
        heads: int = 4,
        table_size: int = 4096,
        embed_dim: int = 64,
        kernel_size: int = 4,
        seed: int = 0,
        pad_id: int = 0,
        compression: torch.Tensor | None = None,
        taken_primes: set[int] | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.ngram_sizes = check_engram_options(vocab_size, ngram_sizes, heads, table_size, embed_dim, kernel_size,
                                                pad_id)
        self.heads, self.d_model, self.layer_id = heads, d_model, layer_id
        if compression is None:
            compression = torch.arange(vocab_size)
        if compression.shape != (vocab_size,):
            raise SparsecraftError(f"engram compression lookup must have {vocab_size} entries, "
                                   f"got shape {tuple(compression.shape)}")
        self.register_buffer("compression", compression.to(torch.long).clone())
        self.pad_id = int(compression[pad_id])
        primes = head_primes(self.ngram_sizes, heads, table_size, taken_primes if taken_primes is not None else set())
        self.register_buffer("multipliers", layer_multipliers(vocab_size, max(self.ngram_sizes), layer_id, seed))
        self.register_buffer("primes", torch.tensor(primes, dtype=torch.long))
        self.register_buffer("offsets", torch.tensor([0, *primes[:-1]], dtype=torch.long).cumsum(0))
        n_heads = len(primes)
        head_dim = embed_dim // heads
        self.table = nn.Embedding(sum(primes), head_dim)
        width = n_heads * head_dim
        self.key_proj = nn.Linear(width, d_model, bias=False)
        self.value_proj = nn.Linear(width, d_model, bias=False)
        self.key_norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.query_norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.conv_norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.conv = CausalDepthwiseConv(d_model, kernel_size, dilation=max(self.ngram_sizes))

    def addresses(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, T, orders * heads) table rows of every position (offsets included)."""
        if token_ids.dim() != 2:
            raise SparsecraftError(f"engram expects (batch, seq) token ids, got shape {tuple(token_ids.shape)}")
        local = hash_ngrams(self.compression[token_ids], self.ngram_sizes, self.heads, self.multipliers,
                            self.primes, self.pad_id)
        return local + self.offsets

    def rows_needed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Sorted unique table rows a batch reads (what to fetch from host memory)."""
        return torch.unique(self.addresses(token_ids))

    def forward(self, hidden: torch.Tensor, token_ids: torch.Tensor,
                fetched: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        rows = self.addresses(token_ids)
        if fetched is None:
            e = self.table(rows)
        else:
            have, values = fetched
            e = values.to(hidden.dtype)[torch.searchsorted(have, rows)]
        e = e.flatten(-2)
        key = self.key_norm(self.key_proj(e))
        gate = (key * self.query_norm(hidden)).sum(-1, keepdim=True) / math.sqrt(self.d_model)
        gate = torch.sigmoid(gate.sign() * gate.abs().clamp_min(1e-6).sqrt())
        v = gate * self.value_proj(e)
        return v + F.silu(self.conv(self.conv_norm(v)))
