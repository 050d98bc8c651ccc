"""``qgroup``: group sparsity + quantization (GQSA's storage): one bit per ``g`` consecutive inputs
of a row (``g`` in 4, 8, 16) telling whether the group is stored, the ``bits``-bit codes of the
stored groups (all ``g`` of them, zeros included as the zero point), and float16 scales (+ zero
points) per quantization group of ``G`` inputs.

Bytes for a (rows, cols) weight with ``k`` stored groups: ``ceil(rows*cols/g/8) + ceil(k*g*bits/8)
+ 2*rows*cols/G`` (+ zero points when asymmetric). 50% of int4 groups of 16 with G = 64: 0.008 +
0.25 + 0.031 = 0.29 bytes per weight. Applies to any weight (a group holding one nonzero is stored
whole), and ``auto`` picks it when it is the smallest -- i.e. when the zeros come in groups.
"""

from __future__ import annotations

import numpy as np

from sparsecraft.formats.base import FORMATS, Packed, pack_uint
from sparsecraft.formats.qcommon import GROUPS, QuantFormat, _check_bitmap, _check_codes, packed_len


@FORMATS.register("qgroup")
class QGroup(QuantFormat):
    """1 bit per group of g inputs + the stored groups' codes + float16 scales per group."""

    def __init__(self, bits: int = 4, group: int = 64, sym: bool | int = True, g: int = 16) -> None:
        super().__init__(bits, group, sym)
        if g not in GROUPS:
            raise ValueError(f"qgroup g must be one of {GROUPS}, got {g!r}")
        self.g = int(g)

    def params(self) -> dict:
        return {**super().params(), "g": self.g}

    def _groups(self, nz: np.ndarray) -> np.ndarray | None:
        rows, cols = nz.shape
        if cols % self.g:
            return None
        return nz.reshape(rows, cols // self.g, self.g).any(axis=2)

    def quant_size(self, nz: np.ndarray) -> int | None:
        groups = self._groups(nz)
        if groups is None:
            return None
        rows, cols = nz.shape
        kept = int(np.count_nonzero(groups))
        return (groups.size + 7) // 8 + packed_len(kept * self.g, self.bits) + self.side_bytes(rows, cols)

    def quant_encode(self, codes: np.ndarray, nz: np.ndarray) -> dict[str, np.ndarray]:
        groups = self._groups(nz)
        assert groups is not None
        rows, cols = codes.shape
        flat = groups.reshape(-1)
        kept = codes.reshape(-1, self.g)[flat]
        return {"gbitmap": np.packbits(flat, bitorder="little"), "codes": pack_uint(kept.reshape(-1), self.bits)}

    def mask_parts(self, rows: int, cols: int) -> dict[str, int]:
        if cols % self.g:
            raise ValueError(f"group of {self.g} does not divide {cols} inputs")
        return {"gbitmap": (rows * cols // self.g + 7) // 8}

    def quant_codes(self, p: Packed, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray | None]:
        if cols % self.g:
            raise ValueError(f"group of {self.g} does not divide {cols} inputs")
        n_groups = rows * cols // self.g
        stored = _check_bitmap(p.parts.get("gbitmap"), n_groups, "gbitmap")
        kept = int(np.count_nonzero(stored))
        codes = _check_codes(p.parts.get("codes"), kept * self.g, self.bits)
        q = np.zeros((n_groups, self.g), dtype=np.int64)
        q[stored] = codes.reshape(kept, self.g)
        return q.reshape(rows, cols), np.repeat(stored, self.g).reshape(rows, cols)
