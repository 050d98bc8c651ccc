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

import numpy as np

from sparsecraft.formats.base import FORMATS, Format, Packed, from_rows, pack_uint, rows_of, unpack_uint
from sparsecraft.layout import WeightLayout


def index_bits(m: int) -> int:
    return max(1, math.ceil(math.log2(m)))


def nm_size(numel: int, n: int, m: int, value_bytes: int) -> int:
    kept = numel // m * n
    return kept * value_bytes + (kept * index_bits(m) + 7) // 8


def group_counts(x: np.ndarray, layout: WeightLayout | None, m: int) -> np.ndarray | None:
    """Nonzeros per group of ``m`` along the input dim, or ``None`` when groups don't fit."""
    if layout is None or layout.cols % m:
        return None
    rows = rows_of(x, layout)
    return np.count_nonzero(rows.reshape(-1, m), axis=1)


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

    def size(self, x: np.ndarray, layout: WeightLayout | None) -> int | None:
        counts = group_counts(x, layout, self.m)
        if counts is None or (counts.size and counts.max() > self.n):
            return None
        return nm_size(x.size, self.n, self.m, x.itemsize)

    def encode(self, x: np.ndarray, layout: WeightLayout | None) -> dict[str, np.ndarray]:
        groups = rows_of(x, layout).reshape(-1, self.m)
        # nonzero positions first (in order), then zero positions: the first N of each group
        order = np.argsort(groups == 0, axis=1, kind="stable")[:, : self.n]
        values = np.take_along_axis(groups, order, axis=1)
        if np.count_nonzero(values) != np.count_nonzero(groups):
            raise ValueError(f"tensor is not {self.n}:{self.m} along its input dimension")
        return {"values": values.reshape(-1), "index": pack_uint(order.reshape(-1), index_bits(self.m))}

    def decode(self, p: Packed) -> np.ndarray:
        n, m = int(p.params["n"]), int(p.params["m"])
        layout = WeightLayout(p.layout, tuple(p.shape))
        values = p.parts["values"]
        ngroups = p.numel // m
        if values.size != ngroups * n:
            raise ValueError(f"N:M has {values.size} values, expected {ngroups * n}")
        idx = unpack_uint(p.parts["index"], index_bits(m), ngroups * n).reshape(ngroups, n)
        if idx.size and idx.max() >= m:
            raise ValueError("N:M position out of range")
        out = np.zeros((ngroups, m), dtype=values.dtype)
        np.put_along_axis(out, idx, values.reshape(ngroups, n), axis=1)
        return from_rows(out.reshape(layout.rows, layout.cols), layout)
