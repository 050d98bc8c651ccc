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
from sparsecraft.formats.bsr import BSR
from sparsecraft.formats.nm import NM, group_counts
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


def candidates(x: np.ndarray, layout: WeightLayout | None) -> list[Format]:
    """Every format instance worth sizing for ``x``; on equal size the earlier wins
    (dense, then N:M, which keeps the structure for kernels, then bitmap, CSR, BSR)."""
    out: list[Format] = [make_format("dense")]
    if layout is not None:
        for m in NM_GROUPS:
            counts = group_counts(x, layout, m)
            if counts is not None and counts.size and int(counts.max()) < m:
                out.append(NM(max(1, int(counts.max())), m))
    out.append(make_format("bitmap"))
    if layout is not None:
        out.append(make_format("csr"))
        out.extend(BSR(br, bc) for br, bc in BSR_BLOCKS)
    return out


def choose(x: np.ndarray, layout: WeightLayout | None) -> tuple[Format, int]:
    """The smallest applicable format for bit view ``x`` and its exact size."""
    best: tuple[Format, int] | None = None
    for fmt in candidates(x, layout):
        size = fmt.size(x, layout)
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
        fmt = choose(x, layout)[0]
    else:
        fmt = make_format(format, **params)
    if fmt.size(x, layout) is None:
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
        fmt = min(fits, key=lambda f: f.size(x, layout)) if fits else None
    else:
        fmt = make_format(format)
    if fmt is None or fmt.size(x, layout) is None:
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
