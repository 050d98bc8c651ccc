"""Training-free sparse attention: the registry and the one interface every method implements.

The Sparse Frontier (Nawrot et al., 2025, arXiv 2504.17768) compares training-free sparse
attention methods by their *unit* of sparsification -- single tokens, pages/blocks of keys, or
vertical (key column) / slash (diagonal) patterns -- and by *phase*: sparse prefill (every query of
the prompt) or sparse decode (the generated tokens' queries over a densely built cache).

A method decides, for queries ``q [B, H, Lq, D]`` at absolute positions ``q_pos`` and keys
``k [B, H, T, D]`` at positions ``0..T-1`` (grouped KV heads already repeated), which causal keys
each query keeps: :meth:`SparseAttention.select` returns a bool ``[B, H, Lq, T]`` keep-mask. Its
budget comes from one number, ``sparsity``: a query with n causal keys keeps about
``ceil((1 - sparsity) * n)`` of them, counted in the method's unit. The realised fraction of dropped
(query, key) pairs is measured by :mod:`sparsecraft.attention.apply` and reported next to it.

``observe`` lets a method look at a dense forward (the prompt, in the decode phase) and keep
state for later decode queries (vertical-slash estimates its pattern there).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.registry import Registry

SPARSE_ATTENTION: Registry = Registry("sparse attention", package="sparsecraft.attention",
                                      title="sparse attention methods")


def check_attention_sparsity(sparsity: Any) -> float:
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise SparsecraftError(f"attention sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= s < 1.0 or math.isnan(s):
        raise SparsecraftError(f"attention sparsity must be in [0, 1), got {sparsity!r}")
    return s


def causal_mask(q_pos: torch.Tensor, total: int) -> torch.Tensor:
    """Bool ``[Lq, T]``: key j is visible to the query at position ``q_pos[i]`` iff j <= q_pos[i]."""
    return torch.arange(total, device=q_pos.device)[None, :] <= q_pos[:, None]


def budget(sparsity: float, n: torch.Tensor, minimum: int = 1) -> torch.Tensor:
    """Units kept out of ``n`` (a tensor of counts): ``ceil((1 - sparsity) * n)``, at least
    ``minimum`` and at most ``n``."""
    keep = torch.ceil((1.0 - sparsity) * n.double() - 1e-9).long()
    return torch.minimum(torch.clamp(keep, min=minimum), n.long())


def top_per_row(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool mask of the ``k[..]`` highest entries of each row of ``scores`` (last dim; ``-inf``
    entries are never kept, ``+inf`` ones first; ties -> the lower index). ``k`` broadcasts against
    ``scores[..., 0]``."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return (rank < k.unsqueeze(-1)) & (scores != float("-inf"))


class SparseAttention:
    """Base class: ``select`` returns the keep-mask; ``observe`` sees dense forwards."""

    #: the unit a budget counts ("token", "page", "vertical+slash")
    unit = "token"

    def __init__(self, sparsity: float = 0.8) -> None:
        self.sparsity = check_attention_sparsity(sparsity)

    def select(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, state: dict) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, state: dict) -> None:
        """Called on dense forwards (nothing to remember by default)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sparsity={self.sparsity})"
