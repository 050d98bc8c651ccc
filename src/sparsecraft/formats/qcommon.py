"""Common ground of the quantized formats (``qdense``, ``qbitmap``, ``qgroup``).

A quantized weight (:mod:`sparsecraft.quant`) is stored as integer codes + float16 scales
(+ zero points when asymmetric) instead of float32 values, losslessly: decoding gives back the
float32 weight bit for bit (``s * (q - z)``), and the scales / zero points / spec come back as the
weight's quantization buffers. Parts (all little-endian):

* ``codes``: the codes of the stored weights in row-major order of the row view, ``bits`` each,
  packed LSB first (:func:`sparsecraft.formats.base.pack_uint`);
* ``scales``: float16 (rows, cols / group);
* ``zeros``: the zero points packed ``bits`` each (absent for symmetric grids, zero = 2**(bits-1));
* ``qdense`` stores every code; ``qbitmap`` adds a 1-bit-per-weight ``bitmap`` and stores the codes
  of nonzero weights only; ``qgroup`` a 1-bit-per-``g``-inputs ``gbitmap`` and the codes of the
  groups that hold a nonzero.

Every decoder checks each part's byte length against what the shape, the parameters and the
bitmap's population count require *before* allocating anything, so a truncated or inconsistent
file is an error, never wrong numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.formats.base import (
    FORMATS,
    Format,
    Packed,
    bits_view,
    dtype_name,
    expect_parts,
    pack_uint,
    row_layout,
    unpack_uint,
)
from sparsecraft.layout import WeightLayout
from sparsecraft.quant.grid import BITS, QuantSpec
from sparsecraft.quant.state import SCALE, SPEC, ZERO, QuantState, spec_tensor

QUANT_FORMATS = ("qdense", "qbitmap", "qgroup")
GROUPS = (4, 8, 16)


def packed_len(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


class QuantFormat(Format):
    """Base of the quantized formats: encode from codes + scales, decode to float32 + state."""

    needs_rows = True

    def __init__(self, bits: int = 4, group: int = 64, sym: bool | int = True) -> None:
        # sym comes back from a checkpoint header as 0/1 (headers hold integers only)
        if bits not in BITS or not isinstance(group, int) or group < 1 or sym not in (True, False, 0, 1):
            raise ValueError(f"bad quantized format parameters bits={bits!r} group={group!r} sym={sym!r}")
        self.bits, self.group, self.sym = int(bits), int(group), bool(sym)

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits, "group": self.group, "sym": int(self.sym)}

    # plain tensors carry no scales: these formats are reached through pack_quantized only
    def size(self, x: np.ndarray, layout: WeightLayout | None, nz: np.ndarray | None = None) -> int | None:
        return None

    def encode(self, x: np.ndarray, layout: WeightLayout | None) -> dict[str, np.ndarray]:
        raise SparsecraftError(
            f"format {self.registry_name!r} stores quantized weights only (quantize the layer first)"
        )

    # --- the quantized interface -----------------------------------------------------------
    def quant_size(self, nz: np.ndarray) -> int | None:
        """Exact payload bytes for a (rows, cols) nonzero pattern, ``None`` if it cannot hold it."""
        raise NotImplementedError

    def quant_encode(self, codes: np.ndarray, nz: np.ndarray) -> dict[str, np.ndarray]:
        """Parts for (rows, cols) uint8 ``codes`` and nonzero pattern (scales added by the caller)."""
        raise NotImplementedError

    def quant_codes(self, p: Packed, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray | None]:
        """((rows, cols) int64 codes, (rows, cols) bool of the stored positions or ``None`` when
        every position is stored); positions not stored decode to +0.0."""
        raise NotImplementedError

    def side_bytes(self, rows: int, cols: int) -> int:
        ngroups = rows * (cols // self.group)
        return ngroups * 2 + (0 if self.sym else packed_len(ngroups, self.bits))

    def _scales(self, p: Packed, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        if cols % self.group:
            raise ValueError(f"group {self.group} does not divide {cols} inputs")
        ng = cols // self.group
        scales = p.parts.get("scales")
        if scales is None or scales.dtype != np.uint16 or scales.size != rows * ng:
            got = "missing" if scales is None else f"{scales.size} {scales.dtype}"
            raise ValueError(f"scales: expected {rows * ng} float16 bit patterns (uint16), got {got}")
        scales = scales.view(np.float16)
        if self.sym:
            zeros = np.full(rows * ng, 1 << (self.bits - 1), dtype=np.int64)
        else:
            zp = p.parts.get("zeros")
            if zp is None or zp.size != packed_len(rows * ng, self.bits):
                raise ValueError(f"zeros: expected {packed_len(rows * ng, self.bits)} bytes")
            zeros = unpack_uint(zp, self.bits, rows * ng)
        return scales.astype(np.float32).reshape(rows, ng), zeros.reshape(rows, ng)

    @classmethod
    def side_state_bytes(cls, header: dict[str, Any]) -> int:
        """float32 scales + uint8 zero points per group, and the 3 int64 of the spec
        (:mod:`sparsecraft.quant.state`); 0 for a header whose shape/layout/group do not fit,
        which the caller's size check then reports."""
        group = header.get("params", {}).get("group", 0)
        try:
            layout = WeightLayout(header.get("layout") or "linear", tuple(header["shape"]))
            ngroups = layout.rows * (layout.cols // group) if isinstance(group, int) and group > 0 else 0
        except Exception:
            return 0
        return ngroups * (4 + 1) + 3 * 8

    def mask_parts(self, rows: int, cols: int) -> dict[str, int]:
        """The byte count of each part that says which positions are stored (none: all are)."""
        return {}

    def check_parts(self, p: Packed) -> None:
        """Names and sizes of every part against the shape and parameters, before any decode
        allocates from them (the code count is bounded by the dense code count)."""
        layout = row_layout(p)
        rows, cols = layout.rows, layout.cols
        if cols % self.group:
            raise ValueError(f"{p.format}: group {self.group} does not divide {cols} inputs")
        ng = rows * (cols // self.group)
        sizes = {"scales": ng, **self.mask_parts(rows, cols)}
        if not self.sym:
            sizes["zeros"] = packed_len(ng, self.bits)
        expect_parts(p, {"codes", *sizes}, sizes)
        if p.parts["codes"].size > packed_len(rows * cols, self.bits):
            raise ValueError(f"{p.format} part 'codes' has {p.parts['codes'].size} bytes; {rows * cols} weights "
                             f"need at most {packed_len(rows * cols, self.bits)}")

    def decode(self, p: Packed) -> np.ndarray:
        layout = WeightLayout(p.layout or "linear", tuple(p.shape))
        rows, cols = layout.rows, layout.cols
        s, z = self._scales(p, rows, cols)
        q, stored = self.quant_codes(p, rows, cols)
        g = self.group
        zf = torch.from_numpy(z).to(torch.float32).repeat_interleave(g, 1)
        w = torch.from_numpy(s).repeat_interleave(g, 1) * (torch.from_numpy(q).to(torch.float32) - zf)
        if stored is not None:
            w.masked_fill_(~torch.from_numpy(stored), 0.0)
        return bits_view(layout.from_rows(w).contiguous())

    def quant_state(self, p: Packed) -> dict[str, torch.Tensor]:
        """The quantization buffers (suffix -> tensor) of the decoded weight."""
        layout = WeightLayout(p.layout or "linear", tuple(p.shape))
        s, z = self._scales(p, layout.rows, layout.cols)
        return {SCALE: torch.from_numpy(s.copy()), ZERO: torch.from_numpy(z.astype(np.uint8)),
                SPEC: spec_tensor(QuantSpec(self.bits, self.group, self.sym))}


def _check_codes(part: np.ndarray | None, count: int, bits: int) -> np.ndarray:
    need = packed_len(count, bits)
    if part is None or part.dtype != np.uint8 or part.size != need:
        got = "missing" if part is None else f"{part.size}"
        raise ValueError(f"codes: {count} {bits}-bit codes need {need} bytes, got {got}")
    return unpack_uint(part, bits, count)


def _check_bitmap(part: np.ndarray | None, count: int, what: str) -> np.ndarray:
    need = (count + 7) // 8
    if part is None or part.dtype != np.uint8 or part.size != need:
        got = "missing" if part is None else f"{part.size}"
        raise ValueError(f"{what}: {count} bits need {need} bytes, got {got}")
    return np.unpackbits(part, bitorder="little", count=count).astype(bool)


def quant_candidates(spec: QuantSpec) -> list[QuantFormat]:
    fmts: list[QuantFormat] = [FORMATS.get("qdense")(spec.bits, spec.group, spec.sym)]
    fmts.append(FORMATS.get("qbitmap")(spec.bits, spec.group, spec.sym))
    fmts.extend(FORMATS.get("qgroup")(spec.bits, spec.group, spec.sym, g) for g in GROUPS)
    return fmts


def pack_quantized(t: torch.Tensor, state: QuantState, layout: WeightLayout, format: str = "auto",
                   what: str = "weight") -> Packed:
    """Pack quantized weight ``t`` (codes re-derived and checked, see :func:`codes_of`) in
    ``format`` (``auto`` = the smallest quantized format that holds it, ``qdense`` on ties)."""
    if t.dtype != torch.float32:
        raise SparsecraftError(f"{what}: quantized weights must be float32, got {dtype_name(t.dtype)}")
    rows_view = layout.to_rows(t.detach().cpu())
    codes = state.codes(rows_view, what).numpy()
    nz = (rows_view != 0).numpy()
    if format == "auto":
        sizes = [(f, f.quant_size(nz)) for f in quant_candidates(state.spec)]
        fmt = min(((f, s) for f, s in sizes if s is not None), key=lambda fs: fs[1])[0]
    else:
        fmt = FORMATS.get(format)(state.spec.bits, state.spec.group, state.spec.sym)
        if fmt.quant_size(nz) is None:
            raise SparsecraftError(f"{what}: format {format!r} cannot hold its zero pattern")
    parts = fmt.quant_encode(codes, nz)
    # float16 scales travel as their bit patterns: every part of a packed tensor is unsigned
    parts["scales"] = state.scale.detach().cpu().to(torch.float16).numpy().reshape(-1).view(np.uint16)
    if not state.spec.sym:
        parts["zeros"] = pack_uint(state.zero.detach().cpu().numpy().astype(np.uint8).reshape(-1), state.spec.bits)
    return Packed(format=fmt.registry_name, shape=tuple(t.shape), dtype="float32", parts=parts,
                  params=fmt.params(), layout=layout.kind)


__all__ = ["QUANT_FORMATS", "QuantFormat", "_check_bitmap", "_check_codes", "pack_quantized", "packed_len"]
