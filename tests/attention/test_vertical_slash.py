"""Vertical/slash estimation against loops, and the pattern a query keeps."""

from __future__ import annotations

import math

import torch

from sparsecraft.attention.vertical_slash import VerticalSlashAttention, estimate


def test_estimate_matches_loops():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 6, 4, generator=g), torch.randn(1, 2, 6, 4, generator=g)
    pos = torch.arange(6)
    vertical, slash = estimate(q, k, pos, last_q=3)
    for h in range(2):
        v_ref, s_ref = torch.zeros(6), torch.zeros(6)
        for i in (3, 4, 5):
            w = torch.softmax(torch.stack([q[0, h, i] @ k[0, h, j] / math.sqrt(4) for j in range(i + 1)]), 0)
            for j in range(i + 1):
                v_ref[j] += w[j]
                s_ref[i - j] += w[j]
        torch.testing.assert_close(vertical[0, h], v_ref)
        torch.testing.assert_close(slash[0, h], s_ref)


def test_pattern_from_observed_prompt_in_decode():
    method = VerticalSlashAttention(0.5, last_q=1, sink=0, local=0)
    state = {"vertical": torch.tensor([[[0.0, 0.9, 0.1, 0.0, 0.0, 0.0]]]),
             "slash": torch.tensor([[[0.0, 0.0, 0.8, 0.0, 0.1, 0.0]]])}
    q, k = torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 8, 2)  # 6 prompt tokens + 2 generated
    keep = method.select(q, k, torch.tensor([7]), state)[0, 0, 0]
    # budget ceil(0.5 * 8) = 4 -> 2 columns (1, 2) and 2 diagonals (offsets 2, 4 -> keys 5, 3)
    assert keep.tolist() == [False, True, True, True, False, True, False, False]


def test_sink_and_local_are_always_in():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 1, 40, 4, generator=g), torch.randn(1, 1, 40, 4, generator=g)
    keep = VerticalSlashAttention(0.8, last_q=8, sink=2, local=3).select(q, k, torch.arange(40), {})[0, 0]
    assert keep[:, :2].tril().sum() == 2 * 40 - 1  # columns 0, 1 wherever causal
    for t in range(40):
        assert keep[t, max(0, t - 2) : t + 1].all()  # offsets 0, 1, 2
