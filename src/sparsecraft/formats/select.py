"""``pack(t, format)`` / ``unpack(p)``, and ``format="auto"``: the smallest lossless format.

``auto`` computes the exact byte size of every applicable candidate (dense, bitmap, CSR,
N:M for M in 4/8/16 with N the largest nonzero count of any group, BSR with 4x4/8x8/16x16
blocks) without encoding, and encodes only the winner. Dense wins ties, so a tensor is
stored sparse only when that is strictly smaller.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.formats.base import FORMATS, Format, Packed, bits_view, dtype_from_name, dtype_name, from_bits
from sparsecraft.formats.bsr import BSR, square_block_sizes
from sparsecraft.formats.nm import NM, group_counts, nm_size
from sparsecraft.layout import WeightLayout, layout_for

FORMAT_CHOICES = ("dense", "auto", "bitmap", "csr", "nm", "bsr")
NM_GROUPS = (4, 8, 16)
BSR_BLOCKS = ((4, 4), (8, 8), (16, 16))


def default_layout(t: torch.Tensor, module: nn.Module | None = None) -> WeightLayout | None:
    """Row view of ``t`` (owned by ``module`` if known); ``None`` for 0-D/1-D tensors."""
    if t.dim() < 2:
        return None
    return layout_for(module, t)


def make_format(name: str, **params: Any) -> Format:
    cls = FORMATS.get(name)
    try:
        return cls(**params)
    except TypeError as e:
        raise SparsecraftError(f"bad parameters {params} for format {name!r}: {e}") from None


def nm_counts(nz: np.ndarray, layout: WeightLayout) -> dict[int, np.ndarray]:
    """Nonzeros per group for every M in ``NM_GROUPS`` that tiles the rows (M=8 and 16
    counts are sums of neighbouring M=4 counts: one pass over the tensor)."""
    out: dict[int, np.ndarray] = {}
    prev = None
    for m in NM_GROUPS:
        if layout.cols % m:
            break
        if prev is not None and m == 2 * prev[0]:
            counts = prev[1][0::2] + prev[1][1::2]  # strided add: no reduce over a length-2 axis
        else:
            counts = group_counts(nz, layout, m)
        out[m] = counts
        prev = (m, counts)
    return out


def candidates(x: np.ndarray, layout: WeightLayout | None, nz: np.ndarray | None = None) -> list[Format]:
    """Every format instance worth sizing for ``x``; on equal size the earlier wins
    (dense, then N:M, which keeps the structure for kernels, then bitmap, CSR, BSR)."""
    out: list[Format] = [make_format("dense")]
    nz = x != 0 if nz is None else nz
    if layout is not None:
        for m, counts in nm_counts(nz, layout).items():
            if counts.size and int(counts.max()) < m:
                out.append(NM(max(1, int(counts.max())), m))
    out.append(make_format("bitmap"))
    if layout is not None:
        out.append(make_format("csr"))
        out.extend(BSR(br, bc) for br, bc in BSR_BLOCKS)
    return out


def choose_format(x: np.ndarray, layout: WeightLayout | None) -> tuple[Format, int]:
    """The smallest applicable format for bit view ``x`` and its exact size."""
    best: tuple[Format, int] | None = None
    nz = x != 0
    sides = tuple(br for br, bc in BSR_BLOCKS if br == bc)
    bsr = square_block_sizes(nz, layout, sides, x.itemsize) if layout is not None else {}
    for fmt in candidates(x, layout, nz):
        if isinstance(fmt, NM):  # candidates() already checked that the tensor is N:M
            size = nm_size(x.size, fmt.n, fmt.m, x.itemsize)
        elif isinstance(fmt, BSR) and fmt.br == fmt.bc and fmt.br in sides:
            size = bsr.get(fmt.br)
        else:
            size = fmt.size(x, layout, nz)
        if size is not None and (best is None or size < best[1]):
            best = (fmt, size)
    assert best is not None  # dense always applies
    return best


def pack(
    t: torch.Tensor,
    format: str | Format = "auto",
    layout: WeightLayout | None = None,
    module: nn.Module | None = None,
    **params: Any,
) -> Packed:
    """Pack ``t`` losslessly. ``format``: ``auto`` | ``dense`` | ``bitmap`` | ``csr`` |
    ``nm`` (``n=``, ``m=``) | ``bsr`` (``br=``, ``bc=``), or a :class:`Format` instance."""
    x = bits_view(t)
    if layout is None:
        layout = default_layout(t, module)
    if isinstance(format, Format):
        fmt = format
    elif format == "auto":
        fmt = choose_format(x, layout)[0]
    else:
        fmt = make_format(format, **params)
    if format != "auto" and fmt.size(x, layout) is None:
        why = "has no row view" if layout is None else f"does not fit (row view {layout.rows}x{layout.cols})"
        raise SparsecraftError(
            f"format {fmt.registry_name!r} {fmt.params() or ''} cannot hold a tensor of shape "
            f"{tuple(t.shape)}: it {why}; use format='auto', 'bitmap' or 'dense'"
        )
    parts = fmt.encode(x, layout)
    return Packed(
        format=fmt.registry_name, shape=tuple(t.shape), dtype=dtype_name(t.dtype), parts=parts,
        params=fmt.params(), layout=layout.kind if (layout is not None and fmt.needs_rows) else None,
    )


def pack_if_fits(t: torch.Tensor, format: str, layout: WeightLayout | None = None) -> Packed | None:
    """``pack(t, format)`` when ``format`` can hold ``t`` (``auto`` always can), else ``None``.
    ``nm`` without parameters means the smallest N:M (M in 4/8/16) the tensor satisfies."""
    if format == "auto":
        return pack(t, "auto", layout=layout)
    x = bits_view(t)
    layout = layout if layout is not None else default_layout(t)
    if format == "nm":
        fits = [f for f in candidates(x, layout) if isinstance(f, NM)]
        fmt = min(fits, key=lambda f: nm_size(x.size, f.n, f.m, x.itemsize)) if fits else None
    else:
        fmt = make_format(format)
    if fmt is None or (format != "nm" and fmt.size(x, layout) is None):
        return None
    return pack(t, fmt, layout=layout)


def unpack(p: Packed) -> torch.Tensor:
    """The original tensor, bit for bit."""
    fmt = make_format(p.format, **p.params)
    dtype = dtype_from_name(p.dtype)
    x = fmt.decode(p)
    if tuple(x.shape) != tuple(p.shape):
        raise ValueError(f"decoded shape {tuple(x.shape)} != {tuple(p.shape)}")
    return from_bits(x, dtype)
