"""A fast, bitwise, *additive* digest of a tensor's bytes, for checking weight deltas.

The bytes of a tensor (C order, native little-endian), zero-padded to 32-bit words
``x_0, x_1, ...``, are hashed as the position-weighted sum

    D = sum_k  M[k div 2H] * W[k mod 2H] * x_k     (mod 2**64),      H = 2**16,

    W[2j] = A_j + 2**32 * B_{(j-1) mod H},     W[2j+1] = 2**32 * A_j + B_j,

with ``A_j = splitmix64(2j) | 1``, ``B_j = splitmix64(2j+1) | 1`` and
``M[c] = splitmix64(2**40 + c) | 1`` (splitmix64: Steele, Lea & Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014). Every weight is odd, so:

* any change of a single 32-bit word (one fp32 element, one or two bf16 elements, one bit
  anywhere, ``-0.0`` vs ``+0.0``, a different NaN payload) **always** changes the digest
  (an odd weight times a nonzero difference below ``2**32`` is nonzero mod ``2**64``);
* changes of several words are missed only when their weighted differences cancel mod
  ``2**64``: about ``2**-(64 - v)`` for differences not aligned with the fixed weights,
  where ``v <= 31`` is the lowest changed bit in any changed word (``2**-33`` when only
  sign bits flip, ``~2**-64`` when low mantissa bits change). It is a checksum against
  accidents (a missed update, a delta applied twice, the wrong base), not a cryptographic
  hash: it is not meant to resist someone crafting collisions.

Fast evaluation: read the bytes as 64-bit words twice, ``X_q`` at byte ``8q`` and ``Y_q`` at
byte ``8q + 4`` (the same memory 4 bytes on, no copy). ``X_q = x_2q + 2**32 x_2q+1`` and
``Y_q = x_2q+1 + 2**32 x_2q+2``, so per block ``M * (sum A_j X_q + sum B_j Y_q)`` gives every
word its weight -- each word sits once in a *low* half, which is what makes the high bits
count fully -- with two SIMD ``einsum`` multiply-adds per 512 KiB block and a few scalar
terms where the Y views cross a block or piece boundary. That is faster than ``zlib.crc32``
and far faster than ``blake2b`` (``benchmarks/bench_delta.py``). And because ``D`` is a sum
over positions, the digest of the *result* of a delta is ``D(base) + sum over changed words
of w_k (new - old)``: computed and checked from the changed elements alone, before anything
is written (:func:`changes_digest`).
"""

from __future__ import annotations

from functools import cache

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
_BH = int(_B[-1]) << 32 & MASK  # the weight B_{H-1} gives the first word of the next block


def _dot(a: np.ndarray, b: np.ndarray) -> int:
    """``sum(a * b) mod 2**64`` for uint64 arrays (``einsum`` has a SIMD loop; ``dot`` not)."""
    return int(np.einsum("i,i->", a, b)) if a.size else 0


def block_weights(first: int, stop: int) -> np.ndarray:
    """``M[c]`` for the blocks ``first <= c < stop``."""
    return splitmix64(np.arange(first, stop, dtype=_U64) + _U64(1 << 40)) | _U64(1)


@cache
def element_weights(size: int) -> np.ndarray:
    """``W`` spread over the elements of ``size`` (1, 2 or 4) bytes of one block: the weight
    of element ``r`` within the block is ``W[r div per] * 2**(8 size (r mod per))``."""
    w = np.empty(2 * BLOCK, dtype=_U64)
    w[0::2] = _A + (np.roll(_B, 1) << _U64(32))
    w[1::2] = (_A << _U64(32)) + _B
    per = 4 // size
    return (np.repeat(w, per) << np.tile(np.arange(0, 32, 8 * size, dtype=_U64), w.size)) if per > 1 else w


def _terms(positions: np.ndarray, values: np.ndarray, size: int) -> int:
    """``sum(weight * v)`` (mod 2**64) for uint64 values ``v`` (elements of ``size`` <= 4
    bytes, or wrapped differences of such; overwritten) at *sorted* element ``positions``
    (int64, >= 0): one table gather and one multiply per value, then one sum per block."""
    if not values.size:
        return 0
    per_block = 8 * BLOCK // size
    values *= element_weights(size)[positions & (per_block - 1)]
    shift = per_block.bit_length() - 1
    lo, hi = int(positions[0]) >> shift, int(positions[-1]) >> shift
    if lo == hi:
        return int(np.add.reduce(values)) * int(block_weights(lo, lo + 1)[0]) & MASK
    cuts = np.searchsorted(positions, np.arange(lo, hi + 2, dtype=np.int64) << shift)
    keep = np.flatnonzero(cuts[1:] > cuts[:-1])  # blocks that hold values
    sums = np.add.reduceat(values, cuts[keep])
    return _dot(sums, block_weights(lo, hi + 1)[keep]) & MASK


def _aligned(buf: np.ndarray, first: int) -> int:
    """Digest terms of the bytes ``buf`` (uint8, a multiple of 8 long) that start at byte
    ``8 * first`` of the tensor (pieces at any offsets add up to ``D``)."""
    n = buf.size // 8
    if not n:
        return 0
    x = buf.view(_U64)
    y = buf[4 : 8 * n - 4].view(_U64)  # Y_q for q = first .. first + n - 2: unaligned, no copy
    last = first + n - 1
    c0 = first >> BLOCK_SHIFT
    m = block_weights(c0, (last >> BLOCK_SHIFT) + 2).tolist()
    total = 0
    for i in range(len(m) - 1):
        qa = max(first, (c0 + i) << BLOCK_SHIFT)
        qb = min(last + 1, (c0 + i + 1) << BLOCK_SHIFT)
        j = qa & (BLOCK - 1)
        s = _dot(x[qa - first : qb - first], _A[j : j + qb - qa])
        s += _dot(y[qa - first : min(qb, last) - first], _B[j : j + min(qb, last) - qa])
        total += s * m[i]
        if qb <= last:  # Y_{qb-1} weighted x_2qb with this block's M; it belongs to the next
            total += (m[i + 1] - m[i]) * _BH * int(x[qb - first] & _LOW)
    mf, ml = m[0], m[(last >> BLOCK_SHIFT) - c0]
    total += mf * (int(_B[(first - 1) & (BLOCK - 1)]) << 32) * int(x[0] & _LOW)  # x_2first's B term
    total += ml * int(_B[last & (BLOCK - 1)]) * int(x[-1] >> _U64(32))  # x_2last+1's B term
    return total & MASK


def bytes_digest(buf: np.ndarray, offset: int = 0) -> int:
    """The digest terms of the bytes ``buf`` (uint8) placed at byte ``offset`` of a tensor;
    ``bytes_digest(all bytes) == D``, and the terms of disjoint pieces add up (mod 2**64)."""
    buf = buf.reshape(-1)
    head = min(buf.size, -offset % 8)
    stop = head + (buf.size - head) // 8 * 8
    ends = np.r_[np.arange(head), np.arange(stop, buf.size)]
    total = _terms(ends + offset, np.r_[buf[:head], buf[stop:]].astype(_U64), 1)
    if stop > head:
        total += _aligned(buf[head:stop], (offset + head) // 8)
    return total & MASK


def tensor_digest(t: torch.Tensor) -> int:
    """``D`` of the bytes of ``t`` (an int in ``[0, 2**64)``)."""
    return bytes_digest(bits_view(t).reshape(-1).view(np.uint8))


def _halves(positions: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-byte elements as their two 32-bit words, in order (positions and uint64 values)."""
    v = values.astype(_U64)
    pos = np.stack([2 * positions, 2 * positions + 1], axis=1).reshape(-1)
    return pos, np.stack([v & _LOW, v >> _U64(32)], axis=1).reshape(-1)


def elements_digest(positions: np.ndarray, values: np.ndarray) -> int:
    """The digest terms of the elements ``values`` (an unsigned integer array, 1 to 8 bytes
    each) at sorted element positions ``positions`` of a tensor of that element size."""
    pos = positions.astype(np.int64, copy=False)
    if values.dtype.itemsize == 8:
        return _terms(*_halves(pos, values), 4)
    return _terms(pos, values.astype(_U64), values.dtype.itemsize)


def changes_digest(positions: np.ndarray, old: np.ndarray, new: np.ndarray) -> int:
    """``D(after) - D(before)`` (mod 2**64) when the elements at sorted ``positions`` change
    from ``old`` to ``new`` (unsigned integer arrays of one element size): one weight per
    change."""
    pos = positions.astype(np.int64, copy=False)
    if new.dtype.itemsize == 8:  # word by word: the digest is linear in 32-bit words
        return (elements_digest(pos, new) - elements_digest(pos, old)) & MASK
    diff = np.subtract(new, old, dtype=_U64)  # wraps mod 2**64, and the digest is linear
    return _terms(pos, diff, new.dtype.itemsize)


def digest_hex(value: int) -> str:
    return f"{value:016x}"
