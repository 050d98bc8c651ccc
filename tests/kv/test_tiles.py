"""The pruning rule and the tile format, on vectors small enough to check by hand."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from sparsecraft.errors import SparsecraftError
from sparsecraft.kv.tiles import (
    dense_cache_bytes,
    format_bound_bytes,
    keep_count,
    pack,
    prune_vectors,
    pruned_vector_bytes,
    unpack,
)


def test_keep_count_is_head_dim_minus_floor():
    assert keep_count(0.7, 64) == 64 - 44  # floor(44.8)
    assert keep_count(0.5, 64) == 32
    assert keep_count(0.9, 64) == 64 - 57  # floor(57.6)
    assert keep_count(0.0, 128) == 128
    assert keep_count(0.29, 100) == 100 - 29  # 0.29 * 100 = 28.999999999999996 in floats


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), "x", None])
def test_bad_sparsity_is_one_line_error_naming_it(bad):
    with pytest.raises(SparsecraftError, match=r"\[0, 1\)") as e:
        keep_count(bad, 64)
    assert "\n" not in str(e.value) and repr(bad)[:3] in str(e.value)


def test_pack_by_hand():
    x = torch.tensor([[0.1, -3.0, 2.0, 0.5]])
    bits, vals = pack(x, 2)  # keep |-3| and |2|: elements 1 and 2
    assert bits.tolist() == [[0b0110]]
    assert vals.tolist() == [[-3.0, 2.0]]
    assert unpack(bits, vals, 4).tolist() == [[0.0, -3.0, 2.0, 0.0]]


def test_ties_keep_the_lower_index():
    x = torch.tensor([[1.0, -1.0, 1.0, 0.5]])
    bits, vals = pack(x, 2)
    assert bits.tolist() == [[0b0011]] and vals.tolist() == [[1.0, -1.0]]
    assert prune_vectors(x, 0.5).tolist() == [[1.0, -1.0, 0.0, 0.0]]


def test_bit_63_and_second_tile():
    x = torch.zeros(1, 128)
    x[0, 63], x[0, 64], x[0, 127] = 5.0, -4.0, 3.0
    bits, vals = pack(x, 3)
    assert bits.shape == (1, 2)
    assert bits[0, 0].item() == -(2**63)  # only bit 63: the sign bit of an int64
    assert bits[0, 1].item() == 1 | -(2**63)
    assert vals.tolist() == [[5.0, -4.0, 3.0]]
    assert torch.equal(unpack(bits, vals, 128), x)


def test_exact_zero_count_per_vector_and_round_trip():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 64, generator=g)
    pruned = prune_vectors(x, 0.7)
    assert ((pruned == 0).sum(-1) == 44).all()
    # the kept entries are the 20 largest magnitudes: every kept |x| >= every dropped |x|
    kept_min = torch.where(pruned != 0, x.abs(), torch.inf).amin(-1)
    dropped_max = torch.where(pruned == 0, x.abs(), -torch.inf).amax(-1)
    assert (kept_min >= dropped_max).all()
    bits, vals = pack(x, 20)
    assert torch.equal(unpack(bits, vals, 64), pruned)


def test_unpack_checks_tile_count():
    with pytest.raises(SparsecraftError, match="tiles"):
        unpack(torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, 1), 64)


def test_format_bound_by_hand():
    # 2048 tokens, window 128, 64-wide heads, s = 0.7, fp16: 128 dense rows of 128 B, then
    # 1920 rows of 8 B bitmap + 20 * 2 B values = 48 B; K and V.
    per_head = 128 * 64 * 2 + 1920 * (8 + 20 * 2)
    assert format_bound_bytes(2048, 128, 1, 64, 0.7, 2) == 2 * per_head
    assert pruned_vector_bytes(64, 20, 2) == 48
    ratio = format_bound_bytes(2048, 128, 3, 64, 0.7, 2, layers=30) / dense_cache_bytes(2048, 3, 64, 2, layers=30)
    assert ratio == pytest.approx(108544 / 262144)  # 0.414: the ~41% of the issue
    assert format_bound_bytes(100, 128, 1, 64, 0.7, 4) == dense_cache_bytes(100, 1, 64, 4)


@given(head_dim=st.integers(1, 200), sparsity=st.floats(0.0, 0.999), seed=st.integers(0, 2**16),
       levels=st.integers(1, 6))
@example(head_dim=64, sparsity=0.7, seed=0, levels=1)  # every magnitude tied
def test_pack_property(head_dim, sparsity, seed, levels):
    """Any width, sparsity and tie structure: exactly floor(s * D) zeros' worth of dropped entries,
    kept magnitudes >= dropped ones, ties kept by lower index, lossless round trip."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-levels, levels + 1, (3, head_dim), generator=g).float()
    k = keep_count(sparsity, head_dim)
    bits, vals = pack(x, k)
    dense = unpack(bits, vals, head_dim)
    kept = torch.zeros_like(x, dtype=torch.bool)
    for i in range(head_dim):  # the bitmaps, read bit by bit
        kept[:, i] = ((bits[:, i // 64] >> (i % 64)) & 1).bool()
    assert (kept.sum(1) == k).all() and k == head_dim - int(sparsity * head_dim + 1e-6)
    assert torch.equal(dense, torch.where(kept, x, 0.0))
    mags = x.abs()
    lo_kept = torch.where(kept, mags, torch.inf).amin(1)
    hi_dropped = torch.where(kept, -torch.inf, mags).amax(1)
    assert (lo_kept >= hi_dropped).all()  # kept magnitudes beat dropped ones
    idx = torch.arange(head_dim).expand(3, -1)
    tie = mags == lo_kept[:, None]  # at the boundary magnitude, every kept index precedes every dropped one
    last_kept = torch.where(tie & kept, idx, -1).amax(1)
    first_dropped = torch.where(tie & ~kept, idx, head_dim).amin(1)
    assert (last_kept < first_dropped).all()
