"""A fast, bitwise, *additive* digest of a tensor's bytes, for checking weight deltas.

The bytes of a tensor (C order, native little-endian), zero-padded to whole 32-bit words
``x_0, x_1, ...``, are hashed as the position-weighted sum

    D(x) = sum_k  w_k * x_k   (mod 2**64),      w_k = T[k mod L] * M[k div L]   (mod 2**64)

with ``L = 2**17`` words per block, ``T[j] = splitmix64(j) | 1`` and
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

Why this one (measured in ``benchmarks/bench_delta.py``, one core): it runs at memory-ish
speed in numpy (two ``uint64`` dot products per 512 KiB block, on 64-bit words split as
``T[2q] * x + (T[2q+1] - T[2q] * 2**32) * (x >> 32)``), faster than ``zlib.crc32`` and far
faster than ``blake2b``; and because it is a sum over positions, the digest of the *result*
of a delta is ``D(base) + sum over changed elements of w * (new - old)``: it is computed and
checked from the changed elements alone, before anything is written (:func:`changes_digest`).
"""

from __future__ import annotations

import numpy as np
import torch

from sparsecraft.formats.base import bits_view

MASK = (1 << 64) - 1
BLOCK_SHIFT = 17
BLOCK_WORDS = 1 << BLOCK_SHIFT  # L: 32-bit words per block of the weight table
_HALF = BLOCK_WORDS // 2  # 64-bit words per block (512 KiB of data; fewer numpy calls than smaller ones)
_U64 = np.uint64


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of ``x + golden gamma``, vectorised (uint64 in, uint64 out)."""
    z = x.astype(_U64) + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


_T = splitmix64(np.arange(BLOCK_WORDS, dtype=_U64)) | _U64(1)
_TA = np.ascontiguousarray(_T[0::2])  # weight of the low half of 64-bit word q
_TB = _T[1::2] - (_TA << _U64(32))  # high half, minus what T[2q] * x already counted


def _dot(a: np.ndarray, b: np.ndarray) -> int:
    """``sum(a * b) mod 2**64`` for uint64 arrays (``einsum`` has a SIMD loop; ``dot`` not)."""
    return int(np.einsum("i,i->", a, b)) if a.size else 0


def block_weights(first: int, stop: int) -> np.ndarray:
    """``M[c]`` for the blocks ``first <= c < stop``."""
    return splitmix64(np.arange(first, stop, dtype=_U64) + _U64(1 << 40)) | _U64(1)


def _terms(words: np.ndarray, values: np.ndarray) -> int:
    """``sum(w_k * v)`` (mod 2**64) for uint64 values ``v`` (each a 32-bit word's worth, or a
    wrapped difference of such) standing in the 32-bit words ``k`` (int64, sorted or not)."""
    if not values.size:
        return 0
    blocks = words >> BLOCK_SHIFT
    lo = int(blocks.min())
    weights = _T[words & (BLOCK_WORDS - 1)]
    weights *= block_weights(lo, int(blocks.max()) + 1)[blocks - lo]
    return _dot(values, weights) & MASK


def _aligned(words: np.ndarray, first: int) -> int:
    """Digest terms of the 64-bit words ``words``, the first being 64-bit word ``first``."""
    if not words.size:
        return 0
    c0 = first // _HALF
    weights = block_weights(c0, (first + words.size - 1) // _HALF + 1).tolist()
    high = np.empty(min(_HALF, words.size), dtype=_U64)
    total, pos = 0, 0
    for c, m in enumerate(weights, start=c0):
        j = first + pos - c * _HALF
        n = min(_HALF - j, words.size - pos)
        x = words[pos : pos + n]
        np.right_shift(x, _U64(32), out=high[:n])
        total += (_dot(x, _TA[j : j + n]) + _dot(high[:n], _TB[j : j + n])) * m
        pos += n
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
        lo, hi = ([v & _U64(0xFFFFFFFF) for v in vals], [v >> _U64(32) for v in vals])
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
        total += _aligned(buf[head:stop].view(_U64), (offset + head) // 8)
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
