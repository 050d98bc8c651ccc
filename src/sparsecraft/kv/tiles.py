"""Per-vector magnitude pruning of K/V vectors and the 64-element tile format (Mustafar).

Mustafar (Joo et al., 2025, arXiv 2505.22913) prunes every cached key and value vector (per
batch, head and token) on its own: keep the largest-|x| entries, zero the rest. Here a vector of
``head_dim`` D keeps exactly ``D - floor(sparsity * D)`` entries (:func:`keep_count`); among equal
magnitudes the lower index is kept, so the result is deterministic.

Storage of one pruned vector (ALGORITHMS.md, "KV-cache pruning"): per 64-element tile a 64-bit
bitmap (bit p of tile j set <=> element 64 j + p is kept) and the kept values packed in increasing
element order. Since every vector keeps the same count K, vector i's values start at i * K and no
per-tile offsets are needed (a tile's offset is the popcount of the tiles before it). Bytes per
pruned vector: ``8 * ceil(D / 64) + K * itemsize`` (:func:`pruned_vector_bytes`).

The C++ kernels (``kernels/csrc/kv_kernels.cpp``) read and write the same layout; the functions
here are the plain-torch implementation (used when the extension is unavailable, and by tests).
"""

from __future__ import annotations

import math

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.patterns import count_to_prune

TILE = 64


def check_sparsity(sparsity: float) -> float:
    """``sparsity`` as a float in [0, 1), or a one-line error naming the value."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise SparsecraftError(f"KV sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise SparsecraftError(f"KV sparsity must be in [0, 1), got {sparsity!r}")
    return s


def keep_count(sparsity: float, head_dim: int) -> int:
    """Entries kept per vector: ``head_dim - floor(sparsity * head_dim)`` (float-safe floor)."""
    return int(head_dim) - count_to_prune(check_sparsity(sparsity), int(head_dim))


def n_tiles(head_dim: int) -> int:
    """Number of 64-element tiles (= 64-bit bitmap words) per vector."""
    return (int(head_dim) + TILE - 1) // TILE


def keep_positions(x: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool mask over the last dim of ``x``: the ``n_keep`` largest |x| per vector (ties -> lower
    index; NaN counts as largest)."""
    mag = x.float().abs().nan_to_num(nan=float("inf"))
    order = torch.sort(mag, dim=-1, descending=True, stable=True).indices[..., :n_keep]
    keep = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    return keep.scatter_(-1, order, True)


def prune_vectors(x: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``x`` with every vector (last dim) pruned to ``floor(sparsity * D)`` zeros (dense result)."""
    keep = keep_positions(x, keep_count(sparsity, x.shape[-1]))
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _bit_weights(device: torch.device) -> torch.Tensor:
    """int64 ``1 << p`` for p = 0..63 (bit 63 is the sign bit: two's complement)."""
    w = torch.ones(TILE, dtype=torch.int64, device=device)
    return torch.bitwise_left_shift(w, torch.arange(TILE, device=device))


def pack(x: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune and pack ``x[..., D]``: (bitmaps ``int64[..., ceil(D/64)]``, values ``[..., n_keep]``)."""
    d = x.shape[-1]
    nt = n_tiles(d)
    keep = keep_positions(x, n_keep)
    values = x[keep].reshape(*x.shape[:-1], n_keep)  # row-major: increasing position per vector
    padded = torch.zeros(*x.shape[:-1], nt * TILE, dtype=torch.int64, device=x.device)
    padded[..., :d] = keep.to(torch.int64)
    bits = (padded.reshape(*x.shape[:-1], nt, TILE) * _bit_weights(x.device)).sum(-1)
    return bits, values


def unpack(bits: torch.Tensor, values: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Dense ``[..., head_dim]`` vectors from their bitmaps and packed values."""
    nt = bits.shape[-1]
    if nt != n_tiles(head_dim):
        raise SparsecraftError(f"bitmaps have {nt} tiles, head_dim {head_dim} needs {n_tiles(head_dim)}")
    shifts = torch.arange(TILE, device=bits.device)
    keep = ((bits.unsqueeze(-1) >> shifts) & 1).bool().reshape(*bits.shape[:-1], nt * TILE)[..., :head_dim]
    out = torch.zeros(*bits.shape[:-1], head_dim, dtype=values.dtype, device=values.device)
    return out.masked_scatter_(keep, values)


def pruned_vector_bytes(head_dim: int, n_keep: int, itemsize: int) -> int:
    """Bytes of one pruned vector in the tile format: bitmaps + kept values."""
    return 8 * n_tiles(head_dim) + n_keep * itemsize


def format_bound_bytes(n_tokens: int, window: int, heads: int, head_dim: int, sparsity: float,
                       itemsize: int, layers: int = 1, batch: int = 1) -> int:
    """The format's own bound for a K+V cache of ``n_tokens``: the newest ``window`` tokens dense,
    every older vector one bitmap per tile plus its kept values (no offsets)."""
    dense = min(window, n_tokens)
    pruned = n_tokens - dense
    per_head = dense * head_dim * itemsize + pruned * pruned_vector_bytes(head_dim, keep_count(sparsity, head_dim),
                                                                          itemsize)
    return 2 * layers * batch * heads * per_head


def dense_cache_bytes(n_tokens: int, heads: int, head_dim: int, itemsize: int, layers: int = 1,
                      batch: int = 1) -> int:
    """Bytes of a dense K+V cache of ``n_tokens``."""
    return 2 * layers * batch * heads * n_tokens * head_dim * itemsize
