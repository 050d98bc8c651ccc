"""Index compression for sparse deltas: gap coding + LEB128 varints or fixed small ints.

Sorted element indices ``i_0 < i_1 < ...`` (relative to a base ``b``) become gaps
``g_0 = i_0 - b``, ``g_k = i_k - i_{k-1} - 1`` (all >= 0). Gaps are written in whichever
coding is smallest for the chunk:

* ``u8`` / ``u16`` / ``u32`` / ``u64``: fixed width, when the largest gap fits;
* ``varint``: LEB128, 7 bits per byte, high bit = "more bytes follow". With ``c`` of ``n``
  elements changed at random the mean gap is ``n / c``; at 1% changed about 72% of the gaps
  are < 128 and take one byte, so indices cost ~1.3 bytes per changed element (the
  SparseRL-Sync reference sends a 4-byte int32 index).

Everything is vectorised numpy (no Python loop over elements): a varint of up to 10 bytes is
built byte plane by byte plane, and decoded with ``np.add.reduceat``.
"""

from __future__ import annotations

import numpy as np

CODINGS = ("u8", "u16", "u32", "u64", "varint")
_FIXED = {"u8": np.uint8, "u16": np.uint16, "u32": np.uint32, "u64": np.uint64}


def to_gaps(idx: np.ndarray, base: int = 0) -> np.ndarray:
    """Sorted indices -> non-negative gaps (uint64)."""
    idx = idx.astype(np.int64, copy=False)
    gaps = np.empty(idx.size, dtype=np.int64)
    if idx.size:
        gaps[0] = idx[0] - base
        np.subtract(idx[1:], idx[:-1], out=gaps[1:])
        gaps[1:] -= 1
    return gaps.view(np.uint64)


def from_gaps(gaps: np.ndarray, base: int = 0) -> np.ndarray:
    """Inverse of :func:`to_gaps` (int64 indices)."""
    idx = gaps.astype(np.int64) + 1
    if idx.size:
        idx[0] += base - 1
    return np.cumsum(idx, out=idx)


def varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes each value takes as a LEB128 varint (1..10)."""
    lengths = np.ones(values.size, dtype=np.int64)
    for k in range(1, 10):
        big = values >= np.uint64(1 << (7 * k))
        if not big.any():
            break
        lengths += big
    return lengths


def encode_varint(values: np.ndarray) -> np.ndarray:
    """uint64 values -> LEB128 bytes (uint8)."""
    values = values.astype(np.uint64, copy=False)
    if values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    lengths = varint_lengths(values)
    width = int(lengths.max())
    if width == 1:  # every value < 128: the bytes are the values
        return values.astype(np.uint8)
    planes = np.empty((values.size, width), dtype=np.uint8)
    for k in range(width):
        byte = ((values >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        planes[:, k] = byte | ((lengths > k + 1).astype(np.uint8) << 7)
    return planes[np.arange(width) < lengths[:, None]]


def decode_varint(buf: np.ndarray, count: int) -> np.ndarray:
    """LEB128 bytes -> ``count`` uint64 values; raises ``ValueError`` on malformed input."""
    buf = np.asarray(buf, dtype=np.uint8)
    ends = np.flatnonzero(buf < 0x80)
    if ends.size != count or (buf.size and buf[-1] >= 0x80):
        raise ValueError(f"varint stream holds {ends.size} values, expected {count}")
    if count == 0:
        return np.zeros(0, dtype=np.uint64)
    if buf.size == count:  # one byte each
        return buf.astype(np.uint64)
    lengths = np.diff(ends, prepend=-1)
    width = int(lengths.max())
    if width > 10:
        raise ValueError("varint longer than 10 bytes")
    planes = np.zeros((count, width), dtype=np.uint8)
    planes[np.arange(width) < lengths[:, None]] = buf
    out = (planes[:, 0] & 0x7F).astype(np.uint64)
    for k in range(1, width):
        out |= (planes[:, k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
    return out


def encode_gaps(gaps: np.ndarray) -> tuple[str, np.ndarray]:
    """The smallest coding of ``gaps``: (coding name, bytes)."""
    if gaps.size == 0:
        return "u8", np.zeros(0, dtype=np.uint8)
    top = int(gaps.max())
    fixed = next(name for name, dt in _FIXED.items() if top <= np.iinfo(dt).max)
    fixed_bytes = gaps.size * np.dtype(_FIXED[fixed]).itemsize
    if fixed != "u8" and int(varint_lengths(gaps).sum()) < fixed_bytes:
        return "varint", encode_varint(gaps)
    return fixed, gaps.astype(_FIXED[fixed]).view(np.uint8)


def decode_gaps(coding: str, buf: np.ndarray, count: int) -> np.ndarray:
    if coding == "varint":
        return decode_varint(buf, count)
    if coding not in _FIXED:
        raise ValueError(f"unknown index coding {coding!r}; known: {', '.join(CODINGS)}")
    dt = np.dtype(_FIXED[coding])
    if buf.size != count * dt.itemsize:
        raise ValueError(f"{coding} indices: {buf.size} bytes for {count} values")
    return np.ascontiguousarray(buf).view(dt).astype(np.uint64)
