"""Per-query top-k: the token unit with exact scores (an oracle upper bound for token methods)."""

from __future__ import annotations

import torch

from sparsecraft.attention.base import SPARSE_ATTENTION, SparseAttention, budget, causal_mask, top_per_row


@SPARSE_ATTENTION.register("topk")
class TopKAttention(SparseAttention):
    """Per-query top-k tokens: the query at position t with n = t + 1 causal keys keeps the
    ``ceil((1 - sparsity) n)`` keys with the highest q . k (exact scores, ties -> lower index).

    The token-granular, query-adaptive end of The Sparse Frontier's design space (their token
    methods estimate these scores; here they are exact, so it bounds what token selection can do)."""

    unit = "token"

    def select(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, state: dict) -> torch.Tensor:
        causal = causal_mask(q_pos, k.shape[-2])
        scores = (q.float() @ k.float().transpose(-1, -2)).masked_fill(~causal, float("-inf"))
        return top_per_row(scores, budget(self.sparsity, causal.sum(-1)))
