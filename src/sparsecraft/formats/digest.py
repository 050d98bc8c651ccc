"""A fast, bitwise, *additive* digest of a tensor's bytes, for checking weight deltas.

The bytes of a tensor (C order, native little-endian), zero-padded, are read as 64-bit words
twice: ``X_q`` at byte ``8q`` and ``Y_q`` at byte ``8q + 4`` (the second view straddles two
words, at no cost: it is the same memory, 4 bytes further on). The digest is

    D = sum_q  M[q div H] * (A[q mod H] * X_q + B[q mod H] * Y_q)   (mod 2**64)

with ``H = 2**16`` words per block, ``A[j] = splitmix64(2j) | 1``, ``B[j] = splitmix64(2j+1) | 1``
and ``M[c] = splitmix64(2**40 + c) | 1`` (splitmix64: Steele, Lea & Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014). Written over the 32-bit words ``x_k`` it is a
position-weighted sum ``D = sum_k w_k * x_k`` with

    w_2q   = M A_q + 2**32 * M B_{q-1}       (every x_k is once the low half of a view,
    w_2q+1 = 2**32 * M A_q + M B_q            once the high half)

(``M`` of the block of each term), and every ``w_k`` is odd. Hence:

* any change of a single 32-bit word (one fp32 element, one or two bf16 elements, one bit
  anywhere, ``-0.0`` vs ``+0.0``, a different NaN payload) **always** changes the digest
  (an odd weight times a nonzero difference below ``2**32`` is nonzero mod ``2**64``);
* changes of several words are missed only when their weighted differences cancel mod
  ``2**64``: about ``2**-(64 - v)`` for differences not aligned with the fixed weights,
  where ``v <= 31`` is the lowest changed bit in any changed word (``2**-33`` when only
  sign bits flip, ``~2**-64`` when low mantissa bits change). It is a checksum against
  accidents (a missed update, a delta applied twice, the wrong base), not a cryptographic
  hash: it is not meant to resist someone crafting collisions.

Why this one (measured in ``benchmarks/bench_delta.py``, one core): two SIMD ``einsum``
multiply-adds per 512 KiB block and nothing else, faster than ``zlib.crc32`` and far faster
than ``blake2b``; and because it is a sum over positions, the digest of the *result* of a
delta is ``D(base) + sum over changed words of w_k * (new - old)``: it is computed and
checked from the changed elements alone, before anything is written (:func:`changes_digest`).
"""

from __future__ import annotations

import numpy as np
import torch

from sparsecraft.formats.base import bits_view

MASK = (1 << 64) - 1
BLOCK_SHIFT = 16
BLOCK = 1 << BLOCK_SHIFT  # H: 64-bit words per block (512 KiB of data per pair of einsums)
_U64 = np.uint64
_LOW = _U64(0xFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of ``x + golden gamma``, vectorised (uint64 in, uint64 out)."""
    z = x.astype(_U64) + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


_A = splitmix64(np.arange(0, 2 * BLOCK, 2, dtype=_U64)) | _U64(1)
_B = splitmix64(np.arange(1, 2 * BLOCK, 2, dtype=_U64)) | _U64(1)


def _dot(a: np.ndarray, b: np.ndarray) -> int:
    """``sum(a * b) mod 2**64`` for uint64 arrays (``einsum`` has a SIMD loop; ``dot`` not)."""
    return int(np.einsum("i,i->", a, b)) if a.size else 0


def block_weights(first: int, stop: int) -> np.ndarray:
    """``M[c]`` for the blocks ``first <= c < stop``."""
    return splitmix64(np.arange(first, stop, dtype=_U64) + _U64(1 << 40)) | _U64(1)


# w_k = M[k div 2H] * W[k mod 2H], except at the first word of a block (k = 2H c, c >= 1), whose
# 2**32 * M B_{q-1} term uses the previous block's M: added by ``word_weights`` (W[0] = A_0 only)
_W = np.empty(2 * BLOCK, dtype=_U64)
_W[0::2] = _A + (np.r_[_U64(0), _B[:-1]] << _U64(32))
_W[1::2] = (_A << _U64(32)) + _B


def word_weights(k: np.ndarray) -> np.ndarray:
    """``w_k`` for an array of 32-bit word numbers ``k`` (int64, >= 0)."""
    if not k.size:
        return np.zeros(0, dtype=_U64)
    blocks = k >> (BLOCK_SHIFT + 1)
    lo = int(blocks.min())
    m = block_weights(lo, int(blocks.max()) + 1)
    w = _W[k & (2 * BLOCK - 1)]
    w *= m[blocks - lo]
    starts = np.flatnonzero(((k & (2 * BLOCK - 1)) == 0) & (k > 0))
    if starts.size:  # + 2**32 M B_{H-1} of the previous block (its last Y view's high half)
        prev = splitmix64(blocks[starts].astype(_U64) - _U64(1) + _U64(1 << 40)) | _U64(1)
        w[starts] += (prev * _B[-1]) << _U64(32)
    return w


def _terms(words: np.ndarray, values: np.ndarray) -> int:
    """``sum(w_k * v)`` (mod 2**64) for uint64 values ``v`` (each a 32-bit word's worth, or a
    wrapped difference of such) standing in the 32-bit words ``k`` (int64)."""
    if not values.size:
        return 0
    return _dot(values, word_weights(words)) & MASK


def _mb(q: int) -> int:
    """``M[q div H] * B[q mod H]`` for one 64-bit word ``q``."""
    return int(block_weights(q >> BLOCK_SHIFT, (q >> BLOCK_SHIFT) + 1)[0]) * int(_B[q & (BLOCK - 1)]) & MASK


def _aligned(buf: np.ndarray, first: int) -> int:
    """Digest terms of the bytes ``buf`` (uint8, a multiple of 8 long) that start at byte
    ``8 * first`` of the tensor: the X views inside it, the Y views inside it, and the halves
    of the two Y views that straddle its ends (a Y view's other half is another piece's)."""
    n = buf.size // 8
    if not n:
        return 0
    x = buf.view(_U64)
    y = buf[4 : 8 * n - 4].view(_U64)  # Y_q for q = first .. first + n - 2, unaligned, no copy
    c0 = first >> BLOCK_SHIFT
    weights = block_weights(c0, ((first + n - 1) >> BLOCK_SHIFT) + 1).tolist()
    total, pos = 0, 0
    for c, m in enumerate(weights, start=c0):
        j = first + pos - (c << BLOCK_SHIFT)
        k = min(BLOCK - j, n - pos)
        ky = min(k, y.size - pos)
        s = _dot(x[pos : pos + k], _A[j : j + k]) + (_dot(y[pos : pos + ky], _B[j : j + ky]) if ky > 0 else 0)
        total += s * m
        pos += k
    total += _mb(first + n - 1) * int(x[-1] >> _U64(32))  # low half of the last Y view
    if first:
        total += (_mb(first - 1) << 32) * int(x[0] & _LOW)  # high half of the Y view before
    return total & MASK


def _placed(
    positions: np.ndarray, values: np.ndarray, minus: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Elements (unsigned, 1 to 8 bytes) at element ``positions`` as (32-bit word numbers,
    uint64 values shifted to their place in the word); 8-byte elements give two words each.
    With ``minus``: the wrapped differences ``values - minus`` instead (the digest is linear)."""
    size = values.dtype.itemsize
    pos = positions.astype(np.int64, copy=False)
    if size == 8:  # two words: split first, then subtract word by word
        vals = [values.astype(_U64)] + ([] if minus is None else [minus.astype(_U64)])
        lo, hi = ([v & _LOW for v in vals], [v >> _U64(32) for v in vals])
        if minus is not None:
            lo[0] -= lo[1]
            hi[0] -= hi[1]
        return np.concatenate([2 * pos, 2 * pos + 1]), np.concatenate([lo[0], hi[0]])
    v = values.astype(_U64)
    if minus is not None:
        v -= minus.astype(_U64)  # wraps mod 2**64
    if size == 4:
        return pos, v
    per = 4 // size  # elements per word
    v <<= ((pos & (per - 1)) * (8 * size)).astype(_U64)
    return pos >> (per.bit_length() - 1), v


def bytes_digest(buf: np.ndarray, offset: int = 0) -> int:
    """The digest terms of the bytes ``buf`` (uint8) placed at byte ``offset`` of a tensor;
    ``bytes_digest(all bytes) == D``, and the terms of disjoint pieces add up (mod 2**64)."""
    buf = buf.reshape(-1)
    head = min(buf.size, -offset % 8)
    stop = head + (buf.size - head) // 8 * 8
    ends = np.r_[np.arange(head), np.arange(stop, buf.size)] + offset
    total = _terms(*_placed(ends, np.r_[buf[:head], buf[stop:]]))
    if stop > head:
        total += _aligned(buf[head:stop], (offset + head) // 8)
    return total & MASK


def tensor_digest(t: torch.Tensor) -> int:
    """``D`` of the bytes of ``t`` (an int in ``[0, 2**64)``)."""
    return bytes_digest(bits_view(t).reshape(-1).view(np.uint8))


def elements_digest(positions: np.ndarray, values: np.ndarray) -> int:
    """The digest terms of the elements ``values`` (an unsigned integer array, 1 to 8 bytes
    each) at element positions ``positions`` of a tensor of that element size."""
    return _terms(*_placed(positions, values))


def changes_digest(positions: np.ndarray, old: np.ndarray, new: np.ndarray) -> int:
    """``D(after) - D(before)`` (mod 2**64) when the elements at ``positions`` change from
    ``old`` to ``new`` (unsigned integer arrays of one element size): one weight per change."""
    return _terms(*_placed(positions, new, minus=old))


def digest_hex(value: int) -> str:
    return f"{value:016x}"
