"""The decode arena: exact copies, 64-byte alignment, one copy of a tensor listed twice."""

import torch

from sparsecraft.kernels.arena import ALIGN, in_arena


def test_copies_are_exact_aligned_and_shared_where_listed_twice():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, 700, generator=g)  # 2.8 MB: above the threshold
    b = torch.randint(0, 255, (333,), dtype=torch.uint8, generator=g)
    c = torch.arange(7, dtype=torch.int64)
    out, huge = in_arena([a, b, a, c])
    assert isinstance(huge, bool)
    for src, dst in zip([a, b, a, c], out):
        assert torch.equal(src, dst) and dst.dtype == src.dtype and dst.shape == src.shape
        assert dst.data_ptr() % ALIGN == 0 and dst.data_ptr() != src.data_ptr()
    assert out[0].data_ptr() == out[2].data_ptr()  # the tied copy is one copy
    assert out[1].untyped_storage().data_ptr() == out[3].untyped_storage().data_ptr()  # one buffer
    a.add_(1.0)  # the arena holds copies: later changes to the inputs do not reach it
    assert not torch.equal(a, out[0])


def test_small_inputs_come_back_unchanged():
    t = [torch.ones(10), torch.zeros(3, dtype=torch.uint8)]
    out, huge = in_arena(t)
    assert not huge and all(x is y for x, y in zip(t, out))
