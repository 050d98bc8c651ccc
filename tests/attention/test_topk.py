"""Per-query top-k by hand (head_dim 1: scores are products)."""

from __future__ import annotations

import torch

from sparsecraft.attention.topk import TopKAttention


def test_topk_by_hand():
    k = torch.tensor([3.0, -1.0, 2.0, 5.0]).view(1, 1, 4, 1)
    q = torch.ones(1, 1, 2, 1)
    keep = TopKAttention(0.5).select(q, k, torch.tensor([1, 3]), {})[0, 0]
    # query at 1: 2 causal keys, keeps 1 -> key 0 (3 > -1); query at 3: keeps 2 of 4 -> keys 3 (5) and 0 (3)
    assert keep.tolist() == [[True, False, False, False], [True, False, False, True]]


def test_topk_keeps_exactly_the_budget():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 20, 8, generator=g), torch.randn(2, 3, 20, 8, generator=g)
    keep = TopKAttention(0.7).select(q, k, torch.arange(20), {})
    n = torch.arange(1, 21)
    assert torch.equal(keep.sum(-1), torch.ceil(0.3 * n - 1e-9).long().clamp(min=1).expand(2, 3, 20))
    assert not keep.triu(1).any()  # never a future key
