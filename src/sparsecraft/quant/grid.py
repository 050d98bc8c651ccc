"""Group-wise integer weight grids: the quantization rule every quantizing method shares.

A weight row view ``W`` (out, in) is cut into groups of ``group`` consecutive inputs; each
(row, group) has a scale ``s`` and an integer zero point ``z`` and every weight is stored as an
integer code ``q`` in ``[0, 2**bits - 1]``, meaning ``w = s * (q - z)``.

The parameters follow GPTQ's reference quantizer (Frantar et al. 2023, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", ``quant.py`` of the
official code), per row of a group:

* ``xmin = min(min_j w_j, 0)``, ``xmax = max(max_j w_j, 0)`` (the grid always holds 0);
* symmetric: ``xmax = max(|xmin|, xmax)``, ``xmin = -xmax``, ``z = 2**(bits-1)``;
* a group of zeros gets ``xmin, xmax = -1, 1``;
* ``s = (xmax - xmin) / (2**bits - 1)``; asymmetric ``z = round(-xmin / s)``;
* ``q = clamp(round(w / s) + z, 0, 2**bits - 1)``, dequantized ``s * (q - z)``.

Departures. (1) The reference sets ``xmin = -xmax`` only when ``xmin < 0``: a symmetric group with
no negative weight then gets ``s = xmax / 15`` and clips everything above ``7 s`` (47% of its
largest weight); here a symmetric grid is always ``[-xmax, xmax]``. (2) So that packed files are
lossless: ``s`` is rounded to float16 (the storage
type of every scale; at least the smallest float16 subnormal, so it never becomes 0) *before*
``z`` and the codes are computed. Then ``s * (q - z)`` (an 11-bit mantissa times an integer of at
most 8 bits) is exact in float32, ``w / s`` gives back ``q - z`` exactly, and a quantized weight
can be re-encoded into codes bit for bit (:func:`codes_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparsecraft.errors import SparsecraftError

BITS = (4, 8)
MIN_SCALE = 2.0**-24  # smallest positive float16 (subnormal)
MAX_SCALE = 65504.0  # largest finite float16


@dataclass(frozen=True)
class QuantSpec:
    """``bits`` (4 or 8), ``group`` (inputs per scale), ``sym`` (fixed zero point
    ``2**(bits-1)``); ``embedding``: also quantize the token embedding / tied LM head to this
    many bits (``None`` = leave it float)."""

    bits: int = 4
    group: int = 64
    sym: bool = True
    embedding: int | None = None

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "group": self.group, "sym": self.sym, "embedding": self.embedding}

    def label(self) -> str:
        return f"int{self.bits} g{self.group} {'sym' if self.sym else 'asym'}"

    def check_layer(self, cols: int, name: str) -> None:
        """A one-line error naming layer ``name`` when its ``cols`` inputs cannot be grouped."""
        if cols % self.group:
            fits = [g for g in (16, 32, 64, 128, 256) if cols % g == 0]
            raise SparsecraftError(
                f"layer {name!r}: quantization group {self.group} does not divide its {cols} inputs "
                f"(group sizes that do: {', '.join(map(str, fits)) or 'none of 16..256'})"
            )


def parse_spec(spec: Any) -> QuantSpec:
    """A :class:`QuantSpec` from a spec, a dict ``{"bits": 4, "group": 64, "sym": True,
    "embedding": 8}``, or an int (bits); a one-line error for anything else."""
    if isinstance(spec, QuantSpec):
        return spec
    if isinstance(spec, bool):
        raise SparsecraftError(f"quantize must be a dict like {{'bits': 4, 'group': 64}}, got {spec!r}")
    if isinstance(spec, int):
        spec = {"bits": spec}
    if not isinstance(spec, dict):
        raise SparsecraftError(f"quantize must be a dict like {{'bits': 4, 'group': 64}}, got {spec!r}")
    unknown = set(spec) - {"bits", "group", "sym", "embedding"}
    if unknown:
        raise SparsecraftError(
            f"unknown quantize key(s) {', '.join(sorted(unknown))}; allowed: bits, group, sym, embedding"
        )
    bits, group, sym = spec.get("bits", 4), spec.get("group", 64), spec.get("sym", True)
    emb = spec.get("embedding")
    for key, value, allowed in (("bits", bits, BITS), ("embedding", emb, (None, *BITS))):
        if isinstance(value, bool) or value not in allowed:
            raise SparsecraftError(f"quantize {key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    if isinstance(group, bool) or not isinstance(group, int) or group < 16 or group % 16:
        raise SparsecraftError(f"quantize group must be a multiple of 16 (16, 32, 64, 128, ...), got {group!r}")
    if not isinstance(sym, bool):
        raise SparsecraftError(f"quantize sym must be true or false, got {sym!r}")
    return QuantSpec(int(bits), int(group), sym, None if emb is None else int(emb))


def to_fp16_grid(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` rounded to float16 values (kept as float32), clamped to [2**-24, 65504]."""
    s = scale.to(torch.float32).clamp(MIN_SCALE, MAX_SCALE)
    return s.to(torch.float16).to(torch.float32).clamp_min(MIN_SCALE)


@torch.no_grad()
def find_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per row of ``w`` (rows, group): GPTQ's rule with a float16 scale (module
    docstring). ``zero`` is a float tensor holding integers."""
    maxq = (1 << bits) - 1
    w = w.to(torch.float32)
    zero_t = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
    xmin = torch.minimum(w.min(dim=1).values, zero_t)
    xmax = torch.maximum(w.max(dim=1).values, zero_t)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    both = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(both, torch.full_like(xmax, 1.0), xmax)
    scale = to_fp16_grid((xmax - xmin) / maxq)
    if sym:
        zero = torch.full_like(scale, float((maxq + 1) // 2))
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes (float tensor) ``clamp(round(w / s) + z, 0, maxq)``; ``scale``/``zero``
    broadcast against ``w``."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``s * (q - z)`` in float32 (exact, see the module docstring)."""
    return scale * (q - zero)


def expand_groups(t: torch.Tensor, group: int) -> torch.Tensor:
    """(rows, ngroups) per-group values repeated to (rows, ngroups * group)."""
    return t.repeat_interleave(group, dim=1)


@torch.no_grad()
def rtn(w: torch.Tensor, spec: QuantSpec, bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest group quantization of a whole (rows, cols) matrix (no error feedback):
    (dequantized weight, scale (rows, ngroups), zero (rows, ngroups))."""
    bits = spec.bits if bits is None else bits
    rows, cols = w.shape
    g = spec.group
    groups = w.to(torch.float32).reshape(rows * (cols // g), g)
    scale, zero = find_params(groups, bits, spec.sym)
    q = quantize(groups, scale[:, None], zero[:, None], (1 << bits) - 1)
    deq = dequantize(q, scale[:, None], zero[:, None]).reshape(rows, cols)
    return deq, scale.reshape(rows, cols // g), zero.reshape(rows, cols // g)


@torch.no_grad()
def codes_of(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, what: str = "weight") -> torch.Tensor:
    """The integer codes (uint8, (rows, cols)) of a quantized row view ``w``, checked: every
    entry must equal ``s * (q - z)`` bit for bit with ``q`` in range, else a one-line error (the
    weight was changed after quantization and would not be stored losslessly)."""
    rows, cols = w.shape
    ngroups = scale.shape[1]
    if scale.shape != (rows, ngroups) or zero.shape != (rows, ngroups) or ngroups == 0 or cols % ngroups:
        raise SparsecraftError(
            f"{what}: quantization scales {tuple(scale.shape)} do not match the weight {rows}x{cols}"
        )
    g = cols // ngroups
    s = expand_groups(scale.to(torch.float32), g)
    z = expand_groups(zero.to(torch.float32), g)
    q = torch.round(w.to(torch.float32) / s) + z
    maxq = (1 << bits) - 1
    back = dequantize(q, s, z)
    w32 = w.to(torch.float32)
    same = (back == w32) & ~((back == 0) & torch.signbit(w32))  # -0.0 is not on the grid
    if bool(((q < 0) | (q > maxq)).any()) or not bool(same.all()):
        bad = int((~same | (q < 0) | (q > maxq)).sum())
        raise SparsecraftError(
            f"{what}: {bad} value(s) are not on the layer's int{bits} grid (was the weight changed "
            "after quantization?); re-quantize it or save it unquantized"
        )
    return q.to(torch.uint8)
