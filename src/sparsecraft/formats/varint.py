"""Index compression for sparse deltas: gap coding + LEB128 varints or fixed small ints.

Sorted element indices ``i_0 < i_1 < ...`` (relative to a base ``b``) become gaps
``g_0 = i_0 - b``, ``g_k = i_k - i_{k-1} - 1`` (all >= 0). Gaps are written in whichever
coding is smallest for the chunk:

* ``u8`` / ``u16`` / ``u32`` / ``u64``: fixed width, when the largest gap fits;
* ``varint``: LEB128, 7 bits per byte, high bit = "more bytes follow". With ``c`` of ``n``
  elements changed at random the mean gap is ``n / c``; at 1% changed about 72% of the gaps
  are < 128 and take one byte, so indices cost ~1.3 bytes per changed element (the
  SparseRL-Sync reference sends a 4-byte int32 index).
* ``pfor8``: patched frame of reference with 8-bit slots (PFOR, Zukowski et al., "Super-Scalar
  RAM-CPU Cache Compression", ICDE 2006): the low byte ``g & 0xFF`` of every gap, then the
  *exceptions* (gaps > 255) as ``x`` LEB128 position gaps followed by ``x`` LEB128 high parts
  ``g >> 8``. At 1% changed ~8% of the gaps are exceptions: ~1.15 bytes per index, and both
  directions are one byte-wide pass plus work on the exceptions only (faster than LEB128).

Everything is vectorised numpy, by *byte-length class*: byte ``k`` of every varint that is
longer than ``k`` bytes is written (read) in one gather/scatter, so the Python loop runs over
the <= 10 byte positions, never over values. Values below 2**32 are worked on as uint32.
"""

from __future__ import annotations

import numpy as np

CODINGS = ("u8", "u16", "u32", "u64", "varint", "pfor8")
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
    idx = gaps.astype(np.int64)
    idx += 1
    if idx.size:
        idx[0] += base - 1
    return np.cumsum(idx, out=idx)


def _narrow(values: np.ndarray, top: int) -> np.ndarray:
    """``values`` as uint32 when they fit (half the memory traffic), else uint64."""
    return values.astype(np.uint32 if top < 1 << 32 else np.uint64, copy=False)


def varint_lengths(values: np.ndarray, top: int | None = None) -> np.ndarray:
    """Bytes each value takes as a LEB128 varint (1..10, uint8); ``top`` = ``values.max()``."""
    if top is None:
        top = int(values.max()) if values.size else 0
    lengths = np.ones(values.size, dtype=np.uint8)
    for k in range(1, 10):
        if top < 1 << (7 * k):
            break
        lengths += values >= values.dtype.type(1 << (7 * k))
    return lengths


def _encode(v: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    width = int(lengths.max())
    ends = np.cumsum(lengths, dtype=np.int64)
    starts = ends - lengths
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    byte = (v & v.dtype.type(0x7F)).astype(np.uint8)
    byte |= (lengths > 1).view(np.uint8) << 7
    out[starts] = byte
    for k in range(1, width):  # byte k of every value longer than k bytes
        sel = np.flatnonzero(lengths > k)
        byte = ((v[sel] >> v.dtype.type(7 * k)) & v.dtype.type(0x7F)).astype(np.uint8)
        byte |= (lengths[sel] > k + 1).view(np.uint8) << 7
        out[starts[sel] + k] = byte
    return out


def encode_varint(values: np.ndarray) -> np.ndarray:
    """uint64 values -> LEB128 bytes (uint8)."""
    return _leb128(values.astype(np.uint64, copy=False))


def _decode(buf: np.ndarray, count: int) -> np.ndarray:
    """LEB128 bytes -> ``count`` values as uint32 (when every value has <= 4 bytes) or uint64."""
    if buf.size == count:  # one byte each (or malformed)
        if count and int(buf.max()) >= 0x80:
            raise ValueError("varint stream ends inside a value")
        return buf.astype(np.uint32)
    ends = np.flatnonzero(buf < 0x80)
    if ends.size != count or (buf.size and buf[-1] >= 0x80):
        raise ValueError(f"varint stream holds {ends.size} values, expected {count}")
    lengths = np.diff(ends, prepend=-1)
    width = int(lengths.max())
    if width > 10:
        raise ValueError("varint longer than 10 bytes")
    starts = ends - (lengths - 1)
    work = np.uint32 if width <= 4 else np.uint64  # 4 x 7 bits fit in 32
    out = (buf[starts] & 0x7F).astype(work)
    for k in range(1, width):  # byte k of every value longer than k bytes
        sel = np.flatnonzero(lengths > k)
        out[sel] |= (buf[starts[sel] + k] & 0x7F).astype(work) << work(7 * k)
    return out


def decode_varint(buf: np.ndarray, count: int) -> np.ndarray:
    """LEB128 bytes -> ``count`` uint64 values; raises ``ValueError`` on malformed input."""
    return _decode(np.asarray(buf, dtype=np.uint8).reshape(-1), count).astype(np.uint64)


def _leb128(values: np.ndarray) -> np.ndarray:
    top = int(values.max()) if values.size else 0
    if top < 0x80:
        return values.astype(np.uint8)
    v = _narrow(values, top)
    return _encode(v, varint_lengths(v, top))


def encode_pfor8(gaps: np.ndarray, exceptions: np.ndarray | None = None) -> np.ndarray:
    """Gaps -> ``pfor8`` bytes: low bytes, then LEB128 exception position gaps and high parts."""
    if exceptions is None:
        exceptions = np.flatnonzero(gaps > 0xFF)
    low = gaps.astype(np.uint8)
    if exceptions.size == 0:
        return low
    high = gaps[exceptions] >> gaps.dtype.type(8)
    return np.concatenate([low, _leb128(to_gaps(exceptions)), _leb128(high)])


def decode_pfor8(buf: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`encode_pfor8` (uint64); raises ``ValueError`` on malformed input."""
    buf = np.asarray(buf, dtype=np.uint8).reshape(-1)
    if buf.size < count:
        raise ValueError(f"pfor8 indices: {buf.size} bytes for {count} values")
    out = buf[:count].astype(np.uint64)
    rest = buf[count:]
    if rest.size:
        m = int(np.count_nonzero(rest < 0x80))
        if m % 2:
            raise ValueError("pfor8 exceptions: odd number of varints")
        both = _decode(rest, m).astype(np.uint64)
        pos = from_gaps(both[: m // 2])
        if pos[-1] >= count:
            raise ValueError("pfor8 exception position out of range")
        out[pos] += both[m // 2 :] << np.uint64(8)
    return out


def encode_gaps(gaps: np.ndarray) -> tuple[str, np.ndarray]:
    """The smallest coding of ``gaps``: (coding name, bytes). On a tie the earlier of fixed,
    ``pfor8``, ``varint`` wins (cheaper to decode)."""
    if gaps.size == 0:
        return "u8", np.zeros(0, dtype=np.uint8)
    top = int(gaps.max())
    fixed = next(name for name, dt in _FIXED.items() if top <= np.iinfo(dt).max)
    best = (gaps.size * np.dtype(_FIXED[fixed]).itemsize, fixed, None)
    if fixed == "u8":
        return fixed, gaps.astype(np.uint8)
    v = _narrow(gaps, top)
    exceptions = np.flatnonzero(v > 0xFF)
    if gaps.size + 2 * exceptions.size < best[0]:  # each exception costs >= 2 bytes
        pfor = encode_pfor8(v, exceptions)
        best = min(best, (pfor.size, "pfor8", pfor), key=lambda c: c[0])
    # LEB128 needs >= 1 byte per gap plus one more for every gap > 127 (lower bound first)
    if gaps.size + int(np.count_nonzero(v > 0x7F)) < best[0]:
        lengths = varint_lengths(v, top)
        if int(lengths.sum()) < best[0]:
            return "varint", _encode(v, lengths)
    if best[2] is None:
        return fixed, gaps.astype(_FIXED[fixed]).view(np.uint8)
    return best[1], best[2]


def decode_gaps(coding: str, buf: np.ndarray, count: int) -> np.ndarray:
    """Bytes of ``coding`` -> ``count`` gaps (a fresh uint64 array)."""
    if coding == "varint":
        return decode_varint(buf, count)
    if coding == "pfor8":
        return decode_pfor8(buf, count)
    if coding not in _FIXED:
        raise ValueError(f"unknown index coding {coding!r}; known: {', '.join(CODINGS)}")
    dt = np.dtype(_FIXED[coding])
    if buf.size != count * dt.itemsize:
        raise ValueError(f"{coding} indices: {buf.size} bytes for {count} values")
    return np.ascontiguousarray(buf).view(dt).astype(np.uint64)
