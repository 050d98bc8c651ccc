"""``qbitmap``: one bit per weight + the ``bits``-bit codes of the nonzero weights only, plus
float16 scales (+ zero points) per group of inputs -- sparse *and* quantized, any pattern.

Bytes for a (rows, cols) weight with ``nnz`` nonzeros, groups of ``G`` inputs:
``ceil(rows*cols/8) + ceil(nnz*bits/8) + 2*rows*cols/G`` (+ zero points when asymmetric).
50% sparse int4, G = 64, symmetric: 0.125 + 0.25 + 0.031 = 0.41 bytes per weight, against
0.53 for ``qdense`` and 0.625 for llama.cpp's Q4_1. Wins over ``qdense`` above ~25% sparsity
(int4) or ~13% (int8). A kept weight whose code is the zero point is 0 and not stored.
"""

from __future__ import annotations

import numpy as np

from sparsecraft.formats.base import FORMATS, Packed, pack_uint
from sparsecraft.formats.qcommon import QuantFormat, _check_bitmap, _check_codes, packed_len


@FORMATS.register("qbitmap")
class QBitmap(QuantFormat):
    """1 bit per weight + codes of the nonzero weights + float16 scales per group."""

    def quant_size(self, nz: np.ndarray) -> int | None:
        rows, cols = nz.shape
        return (nz.size + 7) // 8 + packed_len(int(np.count_nonzero(nz)), self.bits) + self.side_bytes(rows, cols)

    def quant_encode(self, codes: np.ndarray, nz: np.ndarray) -> dict[str, np.ndarray]:
        flat = nz.reshape(-1)
        return {"bitmap": np.packbits(flat, bitorder="little"),
                "codes": pack_uint(np.compress(flat, codes.reshape(-1)), self.bits)}

    def mask_parts(self, rows: int, cols: int) -> dict[str, int]:
        return {"bitmap": (rows * cols + 7) // 8}

    def quant_codes(self, p: Packed, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray | None]:
        stored = _check_bitmap(p.parts.get("bitmap"), rows * cols, "bitmap")
        nnz = int(np.count_nonzero(stored))
        kept = _check_codes(p.parts.get("codes"), nnz, self.bits)
        q = np.zeros(rows * cols, dtype=np.int64)
        q[np.flatnonzero(stored)] = kept
        return q.reshape(rows, cols), stored.reshape(rows, cols)
