"""BSR (block sparse row) on the row view: the matrix is cut into ``br x bc`` blocks and
only blocks with at least one (bitwise) nonzero are stored, densely.

Parts: ``indptr`` (block rows + 1), ``indices`` (block column of each stored block) and
``blocks`` (``nblocks * br * bc`` values, each block row-major). Bytes:

    (R + 1) * p + nblocks * (c + br * bc * b)

with ``R = rows / br`` and the smallest index types that fit. Pays off for block patterns
(``block:4x4`` etc.); needs ``rows % br == 0`` and ``cols % bc == 0``.
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


def _blocks(m: np.ndarray, br: int, bc: int) -> np.ndarray:
    r, c = m.shape
    return m.reshape(r // br, br, c // bc, bc).transpose(0, 2, 1, 3)


def block_occupancy(nz_rows: np.ndarray, br: int, bc: int) -> np.ndarray:
    """(R/br, C/bc) bool: which blocks of the bool matrix ``nz_rows`` hold a nonzero. For
    ``bc`` in 1/2/4/8/16 the ``bc`` bool bytes of a block row are read as one word and the
    ``br`` words of a block OR-reduced along the contiguous axis (no 4-D transposed reduce)."""
    r, c = nz_rows.shape
    if bc not in (1, 2, 4, 8, 16):
        return _blocks(nz_rows, br, bc).any(axis=(2, 3))
    words = np.ascontiguousarray(nz_rows).view(f"<u{min(bc, 8)}")
    if bc == 16:
        words = words[:, 0::2] | words[:, 1::2]
    return np.bitwise_or.reduce(words.reshape(r // br, br, c // bc), axis=1) != 0


def bsr_size(occ: np.ndarray, br: int, bc: int, value_bytes: int) -> int:
    nb = int(occ.sum())
    per_block = index_dtype(occ.shape[1]).itemsize + br * bc * value_bytes
    return (occ.shape[0] + 1) * index_dtype(nb + 1).itemsize + nb * per_block


def square_block_sizes(
    nz: np.ndarray, layout: WeightLayout, sides: tuple[int, ...], value_bytes: int
) -> dict[int, int]:
    """Exact BSR bytes for square blocks of every side in ``sides`` (ascending powers of
    two) that tiles the row view; the occupancy of a 2k block is the OR of 2x2 k-blocks."""
    out: dict[int, int] = {}
    occ, prev = None, 0
    for side in sides:
        if layout.rows % side or layout.cols % side:
            break
        if occ is not None and side == 2 * prev:
            occ = occ[0::2] | occ[1::2]
            occ = occ[:, 0::2] | occ[:, 1::2]
        else:
            occ = block_occupancy(rows_of(nz, layout), side, side)
        out[side], prev = bsr_size(occ, side, side, value_bytes), side
    return out


@FORMATS.register("bsr")
class BSR(Format):
    """Dense br x bc blocks where any element is nonzero, CSR-indexed by block."""

    needs_rows = True

    def __init__(self, br: int = 4, bc: int = 4) -> None:
        if int(br) < 1 or int(bc) < 1:
            raise ValueError(f"BSR blocks need br, bc >= 1, got {br}x{bc}")
        self.br, self.bc = int(br), int(bc)

    def params(self) -> dict[str, int]:
        return {"br": self.br, "bc": self.bc}

    def _occupied(self, nz: np.ndarray, layout: WeightLayout | None) -> np.ndarray | None:
        if layout is None or layout.rows % self.br or layout.cols % self.bc:
            return None
        return block_occupancy(rows_of(nz, layout), self.br, self.bc)

    def size(self, x: np.ndarray, layout: WeightLayout | None, nz: np.ndarray | None = None) -> int | None:
        occ = self._occupied(x != 0 if nz is None else nz, layout)
        if occ is None:
            return None
        return bsr_size(occ, self.br, self.bc, x.itemsize)

    def encode(self, x: np.ndarray, layout: WeightLayout | None) -> dict[str, np.ndarray]:
        m = rows_of(x, layout)
        blocks = _blocks(m, self.br, self.bc)
        occ = block_occupancy(m != 0, self.br, self.bc)
        nb = int(occ.sum())
        indptr = np.zeros(occ.shape[0] + 1, dtype=index_dtype(nb + 1))
        np.cumsum(occ.sum(axis=1), out=indptr[1:])
        cols = np.nonzero(occ)[1].astype(index_dtype(occ.shape[1]))
        return {"indptr": indptr, "indices": cols, "blocks": blocks[occ].reshape(-1)}

    def check_parts(self, p: Packed) -> None:
        br, bc = self.br, self.bc
        layout = row_layout(p)
        if layout.rows % br or layout.cols % bc:
            raise ValueError(f"BSR blocks {br}x{bc} do not tile the {layout.rows}x{layout.cols} row view")
        nb = p.parts["indices"].size if "indices" in p.parts else 0
        expect_parts(p, {"indptr", "indices", "blocks"}, {"indptr": layout.rows // br + 1, "blocks": nb * br * bc})
        if nb > (layout.rows // br) * (layout.cols // bc):
            raise ValueError(f"BSR has {nb} blocks, more than the row view holds")

    def decode(self, p: Packed) -> np.ndarray:
        br, bc = int(p.params["br"]), int(p.params["bc"])
        layout = WeightLayout(p.layout, tuple(p.shape))
        nr, nc = layout.rows // br, layout.cols // bc
        indptr = p.parts["indptr"].astype(np.int64)
        cols = p.parts["indices"].astype(np.int64)
        data = p.parts["blocks"]
        if indptr.size != nr + 1 or indptr[-1] != cols.size or data.size != cols.size * br * bc:
            raise ValueError("BSR parts are inconsistent (indptr / indices / blocks)")
        if cols.size and cols.max() >= nc:
            raise ValueError("BSR block column out of range")
        out = np.zeros((nr, nc, br, bc), dtype=data.dtype)
        row = np.repeat(np.arange(nr), np.diff(indptr))
        out[row, cols] = data.reshape(-1, br, bc)
        return from_rows(out.transpose(0, 2, 1, 3).reshape(layout.rows, layout.cols), layout)
