"""CSR (compressed sparse row) on the weight's row view (out, in).

Parts: ``indptr`` (rows + 1 offsets), ``indices`` (column of every nonzero) and ``values``.
Index types are the smallest unsigned type that fits (uint8 when ``in <= 256``, uint16 when
``in <= 65536``, else uint32; ``indptr`` likewise by ``nnz``), so bytes are

    (rows + 1) * p + nnz * (c + b)

with ``p``, ``c`` the index widths and ``b`` the value width. Pays off at high sparsity,
where it beats the bitmap's fixed 1/8 byte per element.
"""

from __future__ import annotations

import numpy as np

from sparsecraft.formats.base import (
    FORMATS,
    Format,
    Packed,
    expect_parts,
    from_rows,
    index_dtype,
    row_layout,
    rows_of,
)
from sparsecraft.layout import WeightLayout


def csr_size(rows: int, cols: int, nnz: int, value_bytes: int) -> int:
    return (rows + 1) * index_dtype(nnz + 1).itemsize + nnz * (index_dtype(cols).itemsize + value_bytes)


@FORMATS.register("csr")
class CSR(Format):
    """Compressed sparse rows with the smallest index types that fit."""

    needs_rows = True

    def size(self, x: np.ndarray, layout: WeightLayout | None, nz: np.ndarray | None = None) -> int | None:
        if layout is None:
            return None
        return csr_size(layout.rows, layout.cols, int(np.count_nonzero(x if nz is None else nz)), x.itemsize)

    def encode(self, x: np.ndarray, layout: WeightLayout | None) -> dict[str, np.ndarray]:
        m = rows_of(x, layout)
        rows, cols = m.shape
        flat = m.reshape(-1)
        idx = np.flatnonzero(flat != 0)  # row-major (sorted by row, then column); bool nonzero is fastest
        indptr = np.searchsorted(idx, np.arange(rows + 1, dtype=np.int64) * cols).astype(index_dtype(idx.size + 1))
        col = idx & (cols - 1) if cols & (cols - 1) == 0 else idx % cols
        return {"indptr": indptr, "indices": col.astype(index_dtype(cols)), "values": flat.take(idx)}

    def check_parts(self, p: Packed) -> None:
        layout = row_layout(p)
        nnz = p.parts["values"].size if "values" in p.parts else 0
        expect_parts(p, {"indptr", "indices", "values"}, {"indptr": layout.rows + 1, "indices": nnz})
        if nnz > p.numel:
            raise ValueError(f"CSR has {nnz} values for {p.numel} elements")

    def decode(self, p: Packed) -> np.ndarray:
        layout = WeightLayout(p.layout, tuple(p.shape))
        indptr = p.parts["indptr"].astype(np.int64)
        cols = p.parts["indices"].astype(np.int64)
        values = p.parts["values"]
        if indptr[-1] != values.size or cols.size != values.size or np.any(np.diff(indptr) < 0):
            raise ValueError("CSR parts are inconsistent (indptr / indices / values)")
        if cols.size and cols.max() >= layout.cols:
            raise ValueError("CSR column index out of range")
        out = np.zeros(layout.rows * layout.cols, dtype=values.dtype)
        cols += np.repeat(np.arange(layout.rows, dtype=np.int64) * layout.cols, np.diff(indptr))
        out[cols] = values  # one flat scatter
        return from_rows(out.reshape(layout.rows, layout.cols), layout)
