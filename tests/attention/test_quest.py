"""Quest page scores and selection by hand; the page score bounds every q . k in its page."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.attention.quest import QuestAttention, page_bounds, page_scores
from sparsecraft.errors import SparsecraftError


def test_page_score_by_hand():
    k = torch.tensor([[1.0, -2.0], [3.0, 0.0], [-1.0, 4.0]]).view(1, 1, 3, 2)  # pages [0, 1], [2]
    lo, hi = page_bounds(k, 2)
    assert lo[0, 0].tolist() == [[1.0, -2.0], [-1.0, 4.0]] and hi[0, 0].tolist() == [[3.0, 0.0], [-1.0, 4.0]]
    q = torch.tensor([2.0, -1.0]).view(1, 1, 1, 2)
    # page 0: max(2*1, 2*3) + max(-1*-2, -1*0) = 6 + 2 = 8; page 1: 2*-1 + -1*4 = -6
    assert page_scores(q, lo, hi)[0, 0, 0].tolist() == [8.0, -6.0]


def test_page_score_is_an_upper_bound():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 2, 5, 8, generator=g), torch.randn(1, 2, 32, 8, generator=g)
    lo, hi = page_bounds(k, 8)
    best = (q @ k.transpose(-1, -2)).view(1, 2, 5, 4, 8).amax(-1)
    assert (page_scores(q, lo, hi) >= best - 1e-5).all()


def test_quest_selects_own_page_and_the_best_others():
    k = torch.tensor([5.0, 5.0, -1.0, -1.0, 2.0, 2.0, 0.0]).view(1, 1, 7, 1)
    q = torch.ones(1, 1, 1, 1)
    keep = QuestAttention(0.5, page_size=2).select(q, k, torch.tensor([6]), {})[0, 0, 0]
    # 4 causal pages, budget 2: own page 3 (token 6) + best other page 0 (score 5)
    assert keep.tolist() == [True, True, False, False, False, False, True]


def test_bad_page_size():
    with pytest.raises(SparsecraftError, match="page_size"):
        QuestAttention(0.5, page_size=0)
