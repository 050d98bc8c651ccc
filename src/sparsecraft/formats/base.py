"""Common ground of the packed formats: bitwise views, bit packing, the ``Packed`` record.

Lossless means *bitwise*: a tensor is handled through an unsigned integer view of its
elements (``float32 -> uint32``, ``float16/bfloat16 -> uint16``, ...), so an element is
"zero" only when all of its bits are zero. ``-0.0`` (sign bit set), NaN payloads and
subnormals are ordinary nonzero values and round-trip exactly.

A format turns a tensor into a :class:`Packed`: named numpy ``parts`` (values, bitmaps,
indices) plus a few JSON-able parameters. ``Packed.nbytes`` is the exact payload size
(sum of the parts' bytes); shape, dtype and parameters are a constant-size header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.layout import WeightLayout
from sparsecraft.registry import Registry

FORMATS: Registry[type[Format]] = Registry("format", package="sparsecraft.formats")

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_SIGNED = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
              torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise SparsecraftError(f"unsupported dtype {name!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def bits_view(t: torch.Tensor) -> np.ndarray:
    """The elements of ``t`` (any shape) as an unsigned integer numpy array of the same
    shape and bytes (no copy for a contiguous CPU tensor)."""
    t = t.detach().cpu().contiguous()
    size = t.element_size()
    if size not in _SIGNED:
        raise SparsecraftError(f"cannot pack dtype {t.dtype}: element size {size}")
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return t.view(_SIGNED[size]).numpy().view(_UINT[size])


def from_bits(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`bits_view`: an unsigned integer array back to a tensor of ``dtype``."""
    size = torch.empty((), dtype=dtype).element_size()
    arr = np.ascontiguousarray(a).astype(_UINT[size], copy=False)
    t = torch.from_numpy(arr.view(np.dtype(f"i{size}")))
    return t.view(torch.uint8).view(torch.bool) if dtype == torch.bool else t.view(dtype)


def index_dtype(limit: int) -> np.dtype:
    """Smallest unsigned integer type holding every value in ``[0, limit)``."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if limit <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def pack_uint(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ints (each < 2**bits) into ``ceil(len*bits/8)`` bytes, LSB first."""
    v = np.ascontiguousarray(values, dtype=np.uint8 if bits <= 8 else np.uint32).reshape(-1)
    if bits == 8:
        return v.astype(np.uint8)
    if 8 % bits == 0:  # 1, 2, 4 bits: several values per byte, one shift-or pass each
        per = 8 // bits
        padded = np.zeros(-(-v.size // per) * per, dtype=np.uint8)
        padded[: v.size] = v
        lanes = padded.reshape(-1, per)
        out = lanes[:, 0].copy()
        for k in range(1, per):
            out |= lanes[:, k] << np.uint8(k * bits)
        return out
    if bits < 8:  # 3, 5, 6, 7 bits: 8 values fill exactly ``bits`` bytes of a uint64 word
        padded = np.zeros(-(-v.size // 8) * 8, dtype=np.uint64)
        padded[: v.size] = v
        lanes = padded.reshape(-1, 8)
        words = lanes[:, 0].copy()
        for k in range(1, 8):
            words |= lanes[:, k] << np.uint64(k * bits)
        out = words.view(np.uint8).reshape(-1, 8)[:, :bits].reshape(-1)
        return out[: -(-v.size * bits // 8)]
    shifts = np.arange(bits, dtype=v.dtype)
    planes = ((v[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_uint(packed: np.ndarray, bits: int, count: int, dtype: Any = np.int64) -> np.ndarray:
    """Inverse of :func:`pack_uint` (returns ``count`` values as ``dtype``, int64 by default)."""
    if bits == 8:
        return packed[:count].astype(dtype)
    if 8 % bits == 0:
        per = 8 // bits
        if packed.size * per < count:
            raise ValueError(f"{packed.size} bytes hold fewer than {count} {bits}-bit values")
        lanes = np.empty((packed.size, per), dtype=np.uint8)
        for k in range(per):  # one strided pass per lane (no broadcast over a tiny axis)
            np.bitwise_and(packed >> np.uint8(k * bits), np.uint8((1 << bits) - 1), out=lanes[:, k])
        return lanes.reshape(-1)[:count].astype(dtype, copy=False)
    if bits < 8:  # inverse of the uint64-word packing in pack_uint
        need = -(-count * bits // 8)
        if packed.size < need:
            raise ValueError(f"{packed.size} bytes hold fewer than {count} {bits}-bit values")
        groups = -(-count // 8)
        raw = np.zeros((groups, 8), dtype=np.uint8)
        flat = packed[: groups * bits]
        staged = np.zeros(groups * bits, dtype=np.uint8)
        staged[: flat.size] = flat
        raw[:, :bits] = staged.reshape(groups, bits)
        words = raw.view(np.uint64).reshape(-1)
        lanes = np.empty((groups, 8), dtype=np.uint8)
        for k in range(8):
            lanes[:, k] = (words >> np.uint64(k * bits)) & np.uint64((1 << bits) - 1)
        return lanes.reshape(-1)[:count].astype(dtype, copy=False)
    planes = np.unpackbits(packed, bitorder="little", count=count * bits).reshape(count, bits)
    weights = (1 << np.arange(bits, dtype=np.int64))
    return (planes.astype(np.int64) @ weights).astype(dtype, copy=False)


@dataclass
class Packed:
    """A tensor in a packed format: ``parts`` hold the payload, the rest is the header."""

    format: str
    shape: tuple[int, ...]
    dtype: str
    parts: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)
    layout: str | None = None  # WeightLayout.kind used for the row view, if any

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        """Exact payload bytes: the sum of the parts' sizes."""
        return int(sum(p.nbytes for p in self.parts.values()))

    def header(self) -> dict[str, Any]:
        """JSON-able description (everything except the parts' bytes)."""
        return {
            "format": self.format, "shape": list(self.shape), "dtype": self.dtype,
            "params": self.params, "layout": self.layout,
            "parts": {k: [str(v.dtype), list(v.shape)] for k, v in self.parts.items()},
        }


class Format:
    """A lossless packed format. Subclasses implement ``size``, ``encode`` and ``decode``."""

    registry_name: str = ""
    needs_rows: bool = False  # True when the format works on the (out, in) row view

    def size(self, x: np.ndarray, layout: WeightLayout | None, nz: np.ndarray | None = None) -> int | None:
        """Exact payload bytes for bit-view ``x`` (shape of the tensor), or ``None`` when
        this format cannot hold it (wrong shape, not N:M, ...). ``nz`` (``x != 0``) may be
        passed in when already computed."""
        raise NotImplementedError

    def encode(self, x: np.ndarray, layout: WeightLayout | None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def decode(self, p: Packed) -> np.ndarray:
        """Bit view of the original tensor, in its original shape."""
        raise NotImplementedError

    def check_parts(self, p: Packed) -> None:
        """Raise ``ValueError`` unless ``p``'s parts have the names and sizes that its shape
        and parameters imply. Run before :meth:`decode` on anything read from a file, so a
        damaged header cannot make decoding allocate more than the stored parts justify."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}


def expect_parts(p: Packed, names: set[str], sizes: dict[str, int]) -> None:
    """``ValueError`` unless ``p`` has exactly the parts ``names``, with the element counts
    given in ``sizes`` (parts not in ``sizes`` are not checked here)."""
    if set(p.parts) != names:
        raise ValueError(f"{p.format} needs parts {sorted(names)}, found {sorted(p.parts)}")
    for name, want in sizes.items():
        if p.parts[name].size != want:
            raise ValueError(f"{p.format} part {name!r} has {p.parts[name].size} elements, "
                             f"shape {list(p.shape)} needs {want}")


def row_layout(p: Packed) -> WeightLayout:
    """The row view ``p`` was stored with; ``ValueError`` when its layout does not fit its shape."""
    fits = {"linear": len(p.shape) == 2, "transposed": len(p.shape) == 2, "conv": len(p.shape) >= 3,
            "experts": len(p.shape) == 3, "experts_transposed": len(p.shape) == 3}
    if not fits.get(p.layout or "", False) or 0 in p.shape:
        raise ValueError(f"{p.format} layout {p.layout!r} does not fit shape {list(p.shape)}")
    return WeightLayout(p.layout, tuple(p.shape))


def rows_of(x: np.ndarray, layout: WeightLayout | None) -> np.ndarray | None:
    """Row view (out, in) of bit-view ``x`` through ``layout`` (a numpy array)."""
    if layout is None:
        return None
    signed = x.view(np.dtype(f"i{x.itemsize}"))
    rows = layout.to_rows(torch.from_numpy(signed)).contiguous().numpy()
    return rows.view(x.dtype)


def from_rows(m: np.ndarray, layout: WeightLayout) -> np.ndarray:
    """Inverse of :func:`rows_of`."""
    signed = np.ascontiguousarray(m).view(np.dtype(f"i{m.itemsize}"))
    return layout.from_rows(torch.from_numpy(signed)).contiguous().numpy().view(m.dtype)
