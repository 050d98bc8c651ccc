"""Gap + varint index coding: round trips, hand-checked bytes, smallest coding chosen."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecraft.formats.varint import (
    decode_gaps,
    decode_varint,
    encode_gaps,
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
        decode_varint(np.array([1, 2], dtype=np.uint8), 3)
