import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsecraft.oneshot.base import fast_lowest_k_mask
from sparsecraft.patterns import lowest_k_mask


@given(st.lists(st.integers(-3, 3), min_size=1, max_size=60), st.data())
def test_fast_lowest_k_equals_stable_argsort_with_ties(values, data):
    scores = torch.tensor(values, dtype=torch.float32).reshape(1, -1)
    k = data.draw(st.integers(0, len(values)))
    assert torch.equal(fast_lowest_k_mask(scores, k), lowest_k_mask(scores, k))
    assert int((~fast_lowest_k_mask(scores, k)).sum()) == k
