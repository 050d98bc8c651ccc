"""Bitmap format: one bit per element (nonzero or not) plus the nonzero values in order.

Bytes for ``n`` elements with ``nnz`` nonzeros of ``b`` bytes each:

    ceil(n / 8) + nnz * b

which is the bitmap bound ``((1 - s) * b + 1/8) * n`` up to the rounding of the last byte.
"Nonzero" is bitwise (see :mod:`sparsecraft.formats.base`), so ``-0.0`` and NaNs are kept.
"""

from __future__ import annotations

import numpy as np

from sparsecraft.formats.base import FORMATS, Format, Packed, expect_parts
from sparsecraft.layout import WeightLayout


@FORMATS.register("bitmap")
class Bitmap(Format):
    """1 bit per element + the nonzero values: ceil(n/8) + nnz x value bytes."""

    def size(self, x: np.ndarray, layout: WeightLayout | None, nz: np.ndarray | None = None) -> int | None:
        return int((x.size + 7) // 8 + np.count_nonzero(x if nz is None else nz) * x.itemsize)

    def encode(self, x: np.ndarray, layout: WeightLayout | None) -> dict[str, np.ndarray]:
        flat = np.ascontiguousarray(x).reshape(-1)
        nz = flat != 0
        # np.compress is ~2x faster than boolean indexing (flat[nz]) at any density
        return {"bitmap": np.packbits(nz, bitorder="little"), "values": np.compress(nz, flat)}

    def check_parts(self, p: Packed) -> None:
        expect_parts(p, {"bitmap", "values"}, {"bitmap": (p.numel + 7) // 8})
        if p.parts["values"].size > p.numel:
            raise ValueError(f"bitmap has {p.parts['values'].size} values for {p.numel} elements")

    def decode(self, p: Packed) -> np.ndarray:
        values = p.parts["values"]
        nz = np.unpackbits(p.parts["bitmap"], bitorder="little", count=p.numel).view(bool)
        idx = np.flatnonzero(nz)
        if idx.size != values.size:
            raise ValueError(f"bitmap has {idx.size} set bits but {values.size} values")
        out = np.zeros(p.numel, dtype=values.dtype)
        out[idx] = values  # a scatter at listed positions beats a boolean-mask assignment
        return out.reshape(p.shape)
