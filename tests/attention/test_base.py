"""Budgets and row-wise top selection, by hand."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.attention.base import SPARSE_ATTENTION, budget, causal_mask, check_attention_sparsity, top_per_row
from sparsecraft.errors import SparsecraftError


def test_budget_is_ceil_of_the_kept_fraction():
    n = torch.tensor([10, 3, 1, 7])
    assert budget(0.8, n).tolist() == [2, 1, 1, 2]  # ceil(2), ceil(0.6), min 1, ceil(1.4)
    assert budget(0.0, n).tolist() == [10, 3, 1, 7]
    assert budget(0.5, torch.tensor([0])).tolist() == [0]  # never more than n


def test_top_per_row_ties_infinities():
    s = torch.tensor([[1.0, 3.0, 3.0, float("-inf"), float("inf")]])
    assert top_per_row(s, torch.tensor([2])).tolist() == [[False, True, False, False, True]]
    assert top_per_row(s, torch.tensor([5])).tolist() == [[True, True, True, False, True]]  # -inf never kept


def test_causal_mask():
    assert causal_mask(torch.tensor([1, 2]), 3).tolist() == [[True, True, False], [True, True, True]]


@pytest.mark.parametrize("bad", [1.0, -0.5, "a", float("nan")])
def test_bad_sparsity(bad):
    with pytest.raises(SparsecraftError, match=r"attention sparsity must be"):
        check_attention_sparsity(bad)


def test_registry_lists_the_three_units():
    assert {"topk", "quest", "vertical_slash"} <= set(SPARSE_ATTENTION.names())
