"""Bit packing of small unsigned ints: same bytes as the LSB-first bit-plane reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsecraft.formats.base import pack_uint, unpack_uint


def reference(values: np.ndarray, bits: int) -> np.ndarray:
    planes = ((values[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little")


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 16), n=st.integers(0, 70), seed=st.integers(0, 2**31))
def test_pack_uint_matches_bit_planes_and_round_trips(bits, n, seed):
    v = np.random.default_rng(seed).integers(0, 1 << bits, n)
    packed = pack_uint(v, bits)
    assert packed.tolist() == reference(v, bits).tolist()  # files written earlier still decode
    assert unpack_uint(packed, bits, n).tolist() == v.tolist()


def test_three_bit_hand_checked():
    # values 1..8 masked to 3 bits: 1,2,3,4,5,6,7,0 -> bits 100 010 110 001 101 011 111 000 (LSB first)
    assert pack_uint(np.arange(1, 9) & 7, 3).tolist() == [0xD1, 0x58, 0x1F]


def test_short_input_is_rejected():
    with pytest.raises(ValueError):
        unpack_uint(np.zeros(2, dtype=np.uint8), 3, 8)
