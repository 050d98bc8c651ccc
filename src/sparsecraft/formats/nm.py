"""N:M format: in every group of M consecutive inputs (row view, along the input dimension)
at most N elements are nonzero; store exactly N values per group plus, per value, its
position inside the group in ``ceil(log2 M)`` bits, bit-packed.

Bytes for ``n`` elements (``n / M`` groups) of ``b`` bytes each:

    (n / M) * N * b + ceil((n / M) * N * ceil(log2 M) / 8)

2:4 in fp16: 4 + 0.5 bytes per 4 elements = 1.125 bytes/element (56% of dense), as in
NVIDIA's sparse tensor cores (Mishra et al., 2021, "Accelerating Sparse Deep Neural
Networks"). Groups with fewer than N nonzeros are padded with (bitwise) zeros at unused
positions, so decoding is a plain scatter. The format applies only when the tensor really
is N:M along the input dimension of its row view (:mod:`sparsecraft.layout`: Linear, conv
with groups along in-channels, GPT-2 ``Conv1D`` transposed).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from sparsecraft.formats.base import (
    FORMATS,
    Format,
    Packed,
    expect_parts,
    from_rows,
    pack_uint,
    row_layout,
    rows_of,
    unpack_uint,
)
from sparsecraft.layout import WeightLayout


def index_bits(m: int) -> int:
    return max(1, math.ceil(math.log2(m)))


def nm_size(numel: int, n: int, m: int, value_bytes: int) -> int:
    kept = numel // m * n
    return kept * value_bytes + (kept * index_bits(m) + 7) // 8


def group_codes(nz_groups: np.ndarray) -> np.ndarray | None:
    """The occupancy of every group (rows of a bool (G, M) array) as an integer code,
    bit j = position j nonzero; ``None`` unless M is 2, 4, 8 or 16. Word arithmetic: the
    M bool bytes (0 or 1) of a group are read as one little-endian word ``w`` of L = min(M, 8)
    bytes; ``(w * sum_k 2**(8(L-1) - 7k)) >> 8(L-1)`` moves byte k (bit 8k) to bit k of the top
    byte, and no other partial product reaches the top byte or carries into it (checked
    exhaustively for every code in the tests)."""
    m = nz_groups.shape[1]
    if m not in (2, 4, 8, 16):
        return None
    lanes = min(m, 8)
    dt = np.dtype(f"<u{lanes}").type
    magic, shift = dt(sum(1 << (8 * (lanes - 1) - 7 * k) for k in range(lanes))), dt(8 * (lanes - 1))
    words = np.ascontiguousarray(nz_groups).view(dt).reshape(-1, m // lanes)
    codes = None
    for part in range(words.shape[1]):
        code = words[:, part] * magic
        code >>= shift
        code = code.astype(np.intp)
        if codes is None:
            codes = code
        else:
            codes |= code << (lanes * part)
    return codes


@lru_cache(maxsize=32)
def _tables(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """For every code: its popcount, and its N kept positions (set bits in order, then
    unset bits in order as padding)."""
    codes = np.arange(1 << m, dtype=np.int64)
    bits = ((codes[:, None] >> np.arange(m)) & 1).astype(bool)
    order = np.argsort(~bits, axis=1, kind="stable")[:, :n].astype(np.uint8)
    return bits.sum(axis=1).astype(np.int32), order


def group_counts(nz: np.ndarray, layout: WeightLayout | None, m: int) -> np.ndarray | None:
    """Nonzeros per group of ``m`` along the input dim (``nz``: the tensor's ``!= 0``), or
    ``None`` when the groups don't tile the row view."""
    if layout is None or layout.cols % m:
        return None
    groups = rows_of(nz, layout).reshape(-1, m)
    codes = group_codes(groups)
    if codes is None:
        return groups.sum(axis=1, dtype=np.int32)
    return _tables(1, m)[0][codes]


def group_positions(nz: np.ndarray, n: int, codes: np.ndarray | None = None) -> np.ndarray:
    """Per group (row of ``nz``), ``n`` distinct positions: the nonzero ones in order, then
    zero ones in order as padding (a table lookup on the occupancy code for M <= 16;
    ``codes`` = ``group_codes(nz)`` when already computed)."""
    codes = group_codes(nz) if codes is None else codes
    if codes is not None:
        table = _tables(n, nz.shape[1])[1]
        width = next((w for w in (1, 2, 4, 8) if w >= n), None)
        if width is None:
            return table[codes]
        # one table word per code: a 1-D take is ~20x faster than a 2-D fancy index
        words = np.zeros((table.shape[0], width), dtype=np.uint8)
        words[:, :n] = table
        got = words.view(f"<u{width}").reshape(-1).take(codes).view(np.uint8).reshape(-1, width)
        return got if width == n else got[:, :n]
    return np.argsort(~nz, axis=1, kind="stable")[:, :n].astype(np.uint8)


@FORMATS.register("nm")
class NM(Format):
    """N kept values per group of M inputs + ceil(log2 M)-bit positions."""

    needs_rows = True

    def __init__(self, n: int = 2, m: int = 4) -> None:
        if not 0 < n <= m:
            raise ValueError(f"N:M needs 0 < N <= M, got {n}:{m}")
        self.n, self.m = int(n), int(m)

    def params(self) -> dict[str, int]:
        return {"n": self.n, "m": self.m}

    def size(self, x: np.ndarray, layout: WeightLayout | None, nz: np.ndarray | None = None) -> int | None:
        counts = group_counts(x != 0 if nz is None else nz, layout, self.m)
        if counts is None or (counts.size and counts.max() > self.n):
            return None
        return nm_size(x.size, self.n, self.m, x.itemsize)

    def encode(self, x: np.ndarray, layout: WeightLayout | None) -> dict[str, np.ndarray]:
        groups = rows_of(x, layout).reshape(-1, self.m)
        nz = groups != 0
        codes = group_codes(nz)
        counts = nz.sum(axis=1, dtype=np.int32) if codes is None else _tables(1, self.m)[0][codes]
        if groups.size and counts.max() > self.n:
            raise ValueError(f"tensor is not {self.n}:{self.m} along its input dimension")
        order = group_positions(nz, self.n, codes)
        values = np.take(groups.reshape(-1), _flat_positions(order, self.m))  # 1-D take: no broadcast index
        return {"values": values, "index": pack_uint(order.reshape(-1), index_bits(self.m))}

    def check_parts(self, p: Packed) -> None:
        n, m = self.n, self.m
        layout = row_layout(p)
        if layout.cols % m:
            raise ValueError(f"N:M groups of {m} do not tile rows of {layout.cols}")
        kept = p.numel // m * n
        expect_parts(p, {"values", "index"}, {"values": kept, "index": (kept * index_bits(m) + 7) // 8})

    def decode(self, p: Packed) -> np.ndarray:
        n, m = int(p.params["n"]), int(p.params["m"])
        layout = WeightLayout(p.layout, tuple(p.shape))
        values = p.parts["values"]
        ngroups = p.numel // m
        if values.size != ngroups * n:
            raise ValueError(f"N:M has {values.size} values, expected {ngroups * n}")
        small = np.uint8 if m <= 256 else np.int64
        idx = unpack_uint(p.parts["index"], index_bits(m), ngroups * n, small).reshape(ngroups, n)
        if idx.size and idx.max() >= m:
            raise ValueError("N:M position out of range")
        out = np.zeros(ngroups * m, dtype=values.dtype)
        out[_flat_positions(idx, m)] = values.reshape(-1)
        return from_rows(out.reshape(layout.rows, layout.cols), layout)


def _flat_positions(order: np.ndarray, m: int) -> np.ndarray:
    """(groups, n) in-group positions -> flat element positions ``group * m + position``."""
    ngroups = order.shape[0]
    dt = np.int32 if ngroups * m < 2**31 else np.int64
    pos = order.astype(dt)
    pos += (np.arange(ngroups, dtype=dt) * dt(m))[:, None]
    return pos.reshape(-1)
