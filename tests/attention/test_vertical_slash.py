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


def test_pattern_size_covers_the_causal_pairs_of_a_prefill():
    # 4 queries at positions 0..3: column c reaches the queries at positions >= c -> 4, 3, 2, 1
    # pairs; diagonal o likewise -> 4, 3, 2, 1; 10 causal pairs in all.
    vertical = torch.tensor([[[0.1, 0.9, 0.5, 0.2]]])  # columns in score order 1, 2, 3, 0 -> 3, 2, 1, 4
    slash = torch.tensor([[[0.0, 0.3, 0.7, 0.1]]])  # diagonals in score order 2, 1, 3, 0 -> 2, 3, 1, 4
    pos = torch.arange(4)
    # one of each covers 3 + 2 = 5 pairs, two of each 5 + 5 = 10
    assert VerticalSlashAttention(0.5).pattern_size(vertical, slash, pos, 4).item() == 1  # target 5
    assert VerticalSlashAttention(0.4).pattern_size(vertical, slash, pos, 4).item() == 2  # target 6
    assert VerticalSlashAttention(0.0).pattern_size(vertical, slash, pos, 4).item() == 2  # target 10


def test_pattern_size_of_one_decode_query_is_half_the_kept_keys():
    # a single query at position 9 reaches every one of the 10 columns and diagonals once
    scores = torch.rand(2, 3, 10, generator=torch.Generator().manual_seed(0))
    n = VerticalSlashAttention(0.6).pattern_size(scores, scores, torch.tensor([9]), 10)
    assert n.shape == (2, 3) and (n == 2).all()  # 0.4 * 10 = 4 keys -> 2 columns + 2 diagonals


def test_pattern_size_counts_reach_not_keys_when_early_columns_win():
    # sink/local-like scores: early columns and short diagonals on top. 64 queries at 0..63, 2080
    # causal pairs, target 0.2 * 2080 = 416; column / diagonal i reaches 64 - i queries, so n of
    # each cover 2 * (64 + 63 + ...) -> n = 3: 378, n = 4: 500. (A T/2 budget would take 7 of each.)
    decreasing = torch.linspace(1.0, 0.0, 64).reshape(1, 1, 64)
    assert VerticalSlashAttention(0.8).pattern_size(decreasing, decreasing, torch.arange(64), 64).item() == 4


def test_prefill_keeps_about_the_target_share_of_causal_pairs():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 2, 64, 8, generator=g), torch.randn(1, 2, 64, 8, generator=g)
    keep = VerticalSlashAttention(0.8, last_q=16, sink=0, local=0).select(q, k, torch.arange(64), {})
    kept = keep.sum((-1, -2)).double() / (64 * 65 / 2)
    # overlaps only lower the share; the last column + diagonal taken add at most 2 * 64 pairs
    assert ((kept > 0.1) & (kept <= 0.2 + 2 * 64 / 2080)).all(), kept
