"""Dense storage: every element, as is. The fallback when no sparse format pays off.

Bytes: ``numel * value_bytes``.
"""

from __future__ import annotations

import numpy as np

from sparsecraft.formats.base import FORMATS, Format, Packed, expect_parts
from sparsecraft.layout import WeightLayout


@FORMATS.register("dense")
class Dense(Format):
    """All elements stored as they are: numel x value bytes."""

    def size(self, x: np.ndarray, layout: WeightLayout | None, nz: np.ndarray | None = None) -> int | None:
        return int(x.size * x.itemsize)

    def encode(self, x: np.ndarray, layout: WeightLayout | None) -> dict[str, np.ndarray]:
        return {"values": np.ascontiguousarray(x).reshape(-1)}

    def check_parts(self, p: Packed) -> None:
        expect_parts(p, {"values"}, {"values": p.numel})

    def decode(self, p: Packed) -> np.ndarray:
        return p.parts["values"].reshape(p.shape)
