"""The additive tensor digest: known answers from an independent pure-Python reference,
bitwise sensitivity (-0.0, NaN payloads, any single word), and the two identities deltas
rely on (pieces add up; a change's effect is computed from the change alone)."""

import struct

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparsecraft.formats.digest import bytes_digest, changes_digest, elements_digest, tensor_digest

M64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """Steele, Lea & Flood (OOPSLA 2014), one output for state ``x`` (Python ints)."""
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def weight(k: int) -> int:
    """w_k = M[k div 2H] W[k mod 2H]: W[2j] = A_j + 2**32 B_(j-1 mod H), W[2j+1] = 2**32 A_j + B_j,
    A_j = splitmix64(2j) | 1, B_j = splitmix64(2j + 1) | 1, M[c] = splitmix64(2**40 + c) | 1, H = 2**16."""
    h = 2**16
    j, odd = (k % (2 * h)) // 2, k % 2
    a, b, b_prev = splitmix64(2 * j) | 1, splitmix64(2 * j + 1) | 1, splitmix64(2 * ((j - 1) % h) + 1) | 1
    w = (a << 32) + b if odd else a + (b_prev << 32)
    return (splitmix64((1 << 40) + k // (2 * h)) | 1) * w & M64


def reference(data: bytes, offset: int = 0) -> int:
    """D = sum_k w_k x_k mod 2**64 over the little-endian 32-bit words x_k of ``data`` placed
    at byte ``offset`` of an otherwise zero tensor (zero words add nothing)."""
    first = offset // 4
    data = bytes(offset - 4 * first) + data
    data += bytes(-len(data) % 4)
    total = 0
    for k, (x,) in enumerate(struct.iter_unpack("<I", data), start=first):
        total = (total + weight(k) * x) & M64
    return total


def raw(t: torch.Tensor) -> bytes:
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(ints).numpy().tobytes()


def test_splitmix64_matches_the_published_first_output():
    assert splitmix64(0) == 0xE220A8397B1DCDAF  # the first output of seed 0 in the paper's generator


def test_known_answers():
    m0, a0, b0, b_last = splitmix64(1 << 40) | 1, 0xE220A8397B1DCDAF, splitmix64(1) | 1, splitmix64(2**17 - 1) | 1
    one = torch.tensor([1], dtype=torch.int32)  # x_0 = 1: D = w_0 = M0 (A_0 + 2**32 B_(H-1))
    assert tensor_digest(one) == m0 * (a0 + (b_last << 32)) & M64
    assert tensor_digest(torch.tensor([1], dtype=torch.uint8)) == tensor_digest(one)  # padded with zeros
    assert tensor_digest(torch.tensor([0, 1], dtype=torch.int32)) == m0 * ((a0 << 32) + b0) & M64
    assert tensor_digest(torch.zeros(1000)) == 0 == tensor_digest(torch.empty(0, dtype=torch.bfloat16))
    assert tensor_digest(torch.tensor([0.0])) != tensor_digest(torch.tensor([-0.0]))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40_000), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.uint8,
                                                         torch.float64, torch.bool]), seed=st.integers(0, 2**32 - 1))
@example(n=2**18 + 3, dtype=torch.bfloat16, seed=0)  # crosses a block (2**16 64-bit words), odd tail
def test_tensor_digest_equals_the_reference(n, dtype, seed):
    rng = np.random.default_rng(seed)
    t = torch.from_numpy(rng.integers(0, 256, n * torch.empty((), dtype=dtype).element_size(), dtype=np.uint8))
    t = t.view(dtype) if dtype != torch.bool else t.bool()
    assert tensor_digest(t) == reference(raw(t))


@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=600), offset=st.integers(0, 2**19 + 9))
@example(data=bytes(range(1, 40)), offset=2**19 - 13)  # straddles the first block boundary (byte 2**19)
def test_pieces_at_any_byte_offset_add_up(data, offset):
    assert bytes_digest(np.frombuffer(data, dtype=np.uint8), offset) == reference(data, offset)


@settings(max_examples=25, deadline=None)
@given(dtype=st.sampled_from([np.uint8, np.uint16, np.uint32, np.uint64]), seed=st.integers(0, 2**32 - 1),
       n_changes=st.integers(1, 50))
def test_a_change_digest_is_the_difference_of_the_digests(dtype, seed, n_changes):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    before = rng.integers(0, info.max, 3000, dtype=dtype, endpoint=True)
    pos = np.sort(rng.choice(before.size, n_changes, replace=False))
    after = before.copy()
    after[pos] = rng.integers(0, info.max, n_changes, dtype=dtype, endpoint=True)
    d_before, d_after = reference(before.tobytes()), reference(after.tobytes())
    assert (d_before + changes_digest(pos, before[pos], after[pos])) & M64 == d_after
    assert elements_digest(np.arange(after.size), after) == d_after


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_changes_at_a_block_boundary(dtype):
    """Word 2**17 starts the second block: its weight takes the first block's last B term."""
    rng = np.random.default_rng(7)
    first = 2**19 // np.dtype(dtype).itemsize  # the first element of the second block (byte 2**19)
    n = first + 9
    before = rng.integers(0, np.iinfo(dtype).max, n, dtype=dtype, endpoint=True)
    pos = np.array([first - 1, first, first + 1, n - 1])
    after = before.copy()
    after[pos] ^= dtype(0x5A5A)
    d = (reference(before.tobytes()) + changes_digest(pos, before[pos], after[pos])) & M64
    assert d == reference(after.tobytes()) == bytes_digest(after.view(np.uint8))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), pos=st.integers(0, 10**6), flip=st.integers(1, 2**32 - 1))
def test_any_change_of_one_word_changes_the_digest(n, pos, flip):
    words = np.random.default_rng(n).integers(0, 2**32, n, dtype=np.uint32)
    changed = words.copy()
    changed[pos % n] ^= np.uint32(flip)
    assert bytes_digest(changed.view(np.uint8)) != bytes_digest(words.view(np.uint8))


@pytest.mark.parametrize("a, b", [(0x00000000, 0x80000000), (0x7FC00000, 0x7FC00001), (0x7F800001, 0xFF800001)])
def test_signed_zeros_and_nan_payloads_differ(a, b):
    x = torch.tensor([a, 5], dtype=torch.int64).to(torch.int32).view(torch.float32)
    y = torch.tensor([b, 5], dtype=torch.int64).to(torch.int32).view(torch.float32)
    assert tensor_digest(x) != tensor_digest(y)


def test_swapped_elements_change_the_digest():
    t = torch.arange(10, dtype=torch.float32)
    assert tensor_digest(t) != tensor_digest(t.flip(0))
