import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsecraft.oneshot.owl import outlier_ratio, owl_sparsities


def test_outlier_ratio_counts_above_m_times_mean():
    s = torch.tensor([1.0] * 18 + [100.0, 200.0])  # mean 15.9 -> threshold 79.5
    assert outlier_ratio([s[:10], s[10:]], m=5) == pytest.approx(2 / 20)


@given(st.lists(st.floats(0, 0.5), min_size=2, max_size=40), st.floats(0.2, 0.8), st.floats(0.0, 0.1))
def test_owl_keeps_the_mean_budget(ratios, target, lam):
    s = owl_sparsities(ratios, target, lam)
    assert sum(s) / len(s) == pytest.approx(target, abs=1e-12)
    assert max(s) - min(s) <= 2 * lam + 1e-12


def test_owl_prunes_outlier_rich_blocks_less():
    s = owl_sparsities([0.01, 0.05, 0.02], 0.7, 0.08)
    assert s[1] < s[2] < s[0]
    assert s[0] - s[1] == pytest.approx(0.16)
    assert owl_sparsities([0.1, 0.1], 0.5) == [0.5, 0.5]


def test_owl_out_of_range_is_an_error():
    with pytest.raises(Exception, match="outside"):
        owl_sparsities([0.0, 1.0], 0.99, 0.08)
