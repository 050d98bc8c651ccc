"""Gap + varint index coding: round trips, hand-checked bytes, smallest coding chosen."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecraft.formats.varint import (
    decode_gaps,
    decode_pfor8,
    decode_varint,
    encode_gaps,
    encode_pfor8,
    encode_varint,
    from_gaps,
    to_gaps,
)


def test_leb128_hand_checked():
    v = np.array([0, 1, 127, 128, 300, 16384], dtype=np.uint64)
    assert encode_varint(v).tolist() == [0, 1, 127, 0x80, 0x01, 0xAC, 0x02, 0x80, 0x80, 0x01]
    assert decode_varint(encode_varint(v), 6).tolist() == v.tolist()


def test_gaps_hand_checked():
    idx = np.array([3, 4, 10])
    assert to_gaps(idx).tolist() == [3, 0, 5]
    assert to_gaps(idx, base=2).tolist() == [1, 0, 5]
    assert from_gaps(to_gaps(idx, 2), 2).tolist() == [3, 4, 10]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=50))
def test_varint_round_trip(values):
    v = np.array(values, dtype=np.uint64)
    assert decode_varint(encode_varint(v), len(values)).tolist() == values


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(0, 10**7), max_size=60), st.integers(0, 5))
def test_index_coding_round_trip(indices, base):
    idx = np.array(sorted(i + base for i in indices), dtype=np.int64)
    coding, buf = encode_gaps(to_gaps(idx, base))
    assert from_gaps(decode_gaps(coding, buf, idx.size), base).tolist() == idx.tolist()


def test_smallest_coding_is_chosen():
    assert encode_gaps(np.array([1, 2, 255], dtype=np.uint64))[0] == "u8"
    coding, buf = encode_gaps(np.array([1, 2, 300], dtype=np.uint64))
    assert coding == "varint" and buf.size == 4  # 1 + 1 + 2 bytes < 3 x u16
    coding, buf = encode_gaps(np.array([20000, 30000], dtype=np.uint64))
    assert coding == "u16" and buf.size == 4  # varint would need 3 + 3


def test_malformed_varint_is_rejected():
    with pytest.raises(ValueError):
        decode_varint(np.array([0x80], dtype=np.uint8), 1)
    with pytest.raises(ValueError):
        decode_varint(np.array([1, 0x80], dtype=np.uint8), 2)
    with pytest.raises(ValueError):
        decode_varint(np.array([1, 2], dtype=np.uint8), 3)


def test_pfor8_hand_checked():
    gaps = np.array([5, 300, 7, 70000, 255], dtype=np.uint64)
    # low bytes, then exception positions 1, 3 as gaps 1, 1, then high parts 1, 273
    assert encode_pfor8(gaps).tolist() == [5, 44, 7, 112, 255, 1, 1, 1, 0x91, 0x02]
    assert decode_pfor8(encode_pfor8(gaps), 5).tolist() == gaps.tolist()
    assert encode_pfor8(np.array([1, 255], dtype=np.uint64)).tolist() == [1, 255]  # no exceptions


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 600), max_size=60))
def test_pfor8_round_trip(values):
    v = np.array(values, dtype=np.uint64)
    assert decode_pfor8(encode_pfor8(v), v.size).tolist() == values


def test_pfor8_is_chosen_at_one_percent_and_beats_varint():
    g = np.random.default_rng(0).geometric(0.01, 100_000).astype(np.uint64) - 1
    coding, buf = encode_gaps(g)
    assert coding == "pfor8" and buf.size < encode_varint(g).size < 2 * g.size
    assert buf.size < 1.2 * g.size  # ~1.15 bytes per index
    assert decode_gaps(coding, buf, g.size).tolist() == g.tolist()


def test_malformed_pfor8_is_rejected():
    with pytest.raises(ValueError):
        decode_pfor8(np.array([1, 2], dtype=np.uint8), 3)  # fewer low bytes than values
    with pytest.raises(ValueError, match="odd"):
        decode_pfor8(np.array([1, 2, 0], dtype=np.uint8), 2)  # position without high part
    with pytest.raises(ValueError, match="range"):
        decode_pfor8(np.array([1, 2, 5, 1], dtype=np.uint8), 2)  # exception at position 5
    with pytest.raises(ValueError):
        decode_pfor8(np.array([1, 2, 0, 0x81], dtype=np.uint8), 2)  # truncated varint
    with pytest.raises(ValueError, match="unknown index coding"):
        decode_gaps("pfor4", np.zeros(2, dtype=np.uint8), 2)
