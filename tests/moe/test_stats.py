import math

import pytest
import torch

from sparsecraft.moe.layer import MoEFFN
from sparsecraft.moe.stats import expert_load, load_from_counts, reset_expert_load


def test_load_statistics_by_hand():
    ld = load_from_counts(torch.tensor([4, 0, 2, 2]), "l0")
    assert ld.fractions == [0.5, 0.0, 0.25, 0.25]
    assert ld.cv == pytest.approx(math.sqrt(2) / 2)  # std sqrt((4+4+0+0)/4) over mean 2
    assert (ld.min_load, ld.max_load, ld.dead, ld.tokens) == (0.0, 2.0, 1, 8)


def test_collapse_onto_one_expert_gives_cv_sqrt_e_minus_1():
    ld = load_from_counts(torch.tensor([10.0, 0, 0, 0, 0]))
    assert ld.cv == pytest.approx(math.sqrt(4)) and ld.dead == 4 and ld.max_load == 5.0


def test_no_tokens_is_nan_not_an_error():
    ld = load_from_counts(torch.zeros(3))
    assert math.isnan(ld.cv) and ld.dead == 3 and ld.tokens == 0


def test_expert_load_reads_every_moe_layer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(MoEFFN(4, 3, 2), torch.nn.Linear(4, 4), MoEFFN(4, 5, 2))
    model(torch.randn(7, 4))
    loads = expert_load(model)
    assert [ld.layer for ld in loads] == ["0", "2"] and [ld.tokens for ld in loads] == [7, 7]
    reset_expert_load(model)
    assert all(ld.tokens == 0 for ld in expert_load(model))
