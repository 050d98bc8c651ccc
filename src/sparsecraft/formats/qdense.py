"""``qdense``: every weight as a ``bits``-bit code + float16 scales (+ zero points) per group.

Bytes for a (rows, cols) weight, groups of ``G`` inputs: ``ceil(rows*cols*bits/8)`` codes +
``2*rows*cols/G`` scales (+ ``ceil(rows*cols/G*bits/8)`` zero points when asymmetric). int4 with
G = 64, symmetric: 0.53 bytes per weight (llama.cpp's Q4_1: 0.625, Q4_0: 0.5625). Zeros are
codes like any other value (the zero point), so any sparsity pattern fits.
"""

from __future__ import annotations

import numpy as np

from sparsecraft.formats.base import FORMATS, Packed, pack_uint
from sparsecraft.formats.qcommon import QuantFormat, _check_codes, packed_len


@FORMATS.register("qdense")
class QDense(QuantFormat):
    """All codes (bits each) + float16 scales (+ zero points) per group of inputs."""

    def quant_size(self, nz: np.ndarray) -> int | None:
        rows, cols = nz.shape
        return packed_len(nz.size, self.bits) + self.side_bytes(rows, cols)

    def quant_encode(self, codes: np.ndarray, nz: np.ndarray) -> dict[str, np.ndarray]:
        return {"codes": pack_uint(codes.reshape(-1), self.bits)}

    def quant_codes(self, p: Packed, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray | None]:
        q = _check_codes(p.parts.get("codes"), rows * cols, self.bits)
        return q.reshape(rows, cols), None
