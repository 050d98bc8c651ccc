"""The two sparse tensor layouts of compressed-tensors (<= 0.14), encoded and decoded without it.

Per compressed weight ``P`` (the module name; files of the first releases used the parameter
name, ``P = <module>.weight``) a checkpoint stores:

``sparse-bitmask`` (compressed-tensors' ``BitmaskCompressor``)
    ``P.shape``       int64 ``[R, C]``, the dense shape;
    ``P.compressed``  the nonzero values, 1-D, in row-major order;
    ``P.bitmask``     uint8 ``[R, ceil(C/8)]``: row r, byte k, bit j (least significant first)
                      says whether column ``8k + j`` of row r is stored (``numpy.packbits(...,
                      axis=-1, bitorder="little")``); padding bits are 0;
    ``P.row_offsets`` int64 ``[R]``: index in ``compressed`` of each row's first value
                      (exclusive prefix sum of the per-row counts).

``sparse-24-bitmask`` (``Sparse24BitMaskCompressor``)
    ``P.shape``       int64 ``[2, 1]`` (``[R, C]`` as a column);
    ``P.compressed``  ``[R, C/2]``: the two kept values of every group of four consecutive
                      elements (row-major), in order;
    ``P.bitmask``     uint8 ``[R, ceil(C/8)]`` as above, exactly two bits set per group of four.

"Nonzero" is the float comparison ``x != 0`` of the reference, so ``-0.0`` is *not* stored and
reads back as ``+0.0``: :func:`encode_bitmask` / :func:`encode_24` turn ``-0.0`` into ``+0.0``
first, so that what is written decodes to exactly the tensor that was checked. A 2:4 group with
fewer than two nonzeros stores zeros at its first free positions (the reference picks by
``topk``; a reader never depends on which). Decoding checks every size and count against the
declared shape before it allocates the dense tensor, and a bitmap / value count mismatch, a
wrong row offset, a set padding bit or a 2:4 group without exactly two bits is an error.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sparsecraft.errors import CheckpointError

MAX_DIM = 1 << 40


def declared_shape(t: torch.Tensor, name: str, expect_24: bool) -> list[int]:
    """The dense shape stored in ``P.shape`` (``[R, C]``; ``[C]`` for the 1-D tensors of the
    first releases)."""
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise CheckpointError(f"{name}.shape is {t.dtype}; expected integers")
    dims = [int(d) for d in t.reshape(-1).tolist()] if t.numel() <= 8 else None
    want = "[R, C]" if expect_24 else "[R, C] or [C]"
    if dims is None or not (len(dims) == 2 or (len(dims) == 1 and not expect_24)):
        raise CheckpointError(f"{name}.shape holds {list(t.shape)} values; expected the dense shape {want}")
    if any(d < 0 or d > MAX_DIM for d in dims):
        raise CheckpointError(f"{name}.shape is {dims}; dimensions must be in [0, 2**40]")
    return dims


def _rows(shape: list[int]) -> tuple[int, int]:
    return (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])


def _bits(bitmask: torch.Tensor, name: str, shape: list[int]) -> np.ndarray:
    """The boolean mask ``[R, C]`` of ``P.bitmask``, checked (sizes first, then padding bits)."""
    rows, cols = _rows(shape)
    want = [*shape[:-1], (cols + 7) // 8]
    if bitmask.dtype not in (torch.uint8, torch.int8) or list(bitmask.shape) != want:
        raise CheckpointError(f"{name}.bitmask is {bitmask.dtype} {list(bitmask.shape)}; shape {shape} needs "
                              f"uint8 {want} (ceil({cols}/8) bytes per row)")
    if rows * cols == 0:
        return np.zeros((rows, cols), dtype=bool)
    raw = bitmask.contiguous().view(torch.uint8).numpy().reshape(rows, -1)
    if cols % 8 and raw.size and np.any(raw[:, -1] >> (cols % 8)):
        raise CheckpointError(f"{name}.bitmask has bits set beyond column {cols} (padding must be 0)")
    return np.unpackbits(raw, axis=-1, count=cols, bitorder="little").astype(bool)


def decode_bitmask(name: str, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense tensor of a ``sparse-bitmask`` weight ``name`` from its four parts."""
    shape = declared_shape(parts["shape"], name, expect_24=False)
    values, offsets = parts["compressed"], parts["row_offsets"]
    if values.dim() != 1 or not values.dtype.is_floating_point:
        raise CheckpointError(f"{name}.compressed is {values.dtype} {list(values.shape)}; expected 1-D float values")
    keep = _bits(parts["bitmask"], name, shape)
    counts = keep.sum(axis=1)
    if int(counts.sum()) != values.numel():
        raise CheckpointError(f"{name}: the bitmask marks {int(counts.sum())} values but {name}.compressed holds "
                              f"{values.numel()}")
    want = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(shape) == 2 else np.zeros(1, dtype=np.int64)
    got = offsets.reshape(-1)
    if offsets.dtype.is_floating_point or got.numel() != want.size or not np.array_equal(got.numpy(), want):
        raise CheckpointError(f"{name}.row_offsets do not match the bitmask (expected the start of each row's "
                              f"values, {want[:4].tolist()}...)")
    return _scatter(values.reshape(-1), keep, shape)


def decode_24(name: str, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense tensor of a ``sparse-24-bitmask`` weight ``name`` from its three parts."""
    shape = declared_shape(parts["shape"], name, expect_24=True)
    rows, cols = shape
    values = parts["compressed"]
    if (rows * cols) % 4 or cols % 2:
        raise CheckpointError(f"{name}: shape {shape} cannot be 2:4 (needs an even number of columns and a "
                              "multiple of 4 elements)")
    if not values.dtype.is_floating_point or list(values.shape) != [rows, cols // 2]:
        raise CheckpointError(f"{name}.compressed is {values.dtype} {list(values.shape)}; shape {shape} needs "
                              f"float [{rows}, {cols // 2}]")
    keep = _bits(parts["bitmask"], name, shape)
    per_group = keep.reshape(-1, 4).sum(axis=1)
    if per_group.size and not np.all(per_group == 2):
        bad = int(np.flatnonzero(per_group != 2)[0])
        raise CheckpointError(f"{name}: the bitmask marks {int(per_group[bad])} of the 4 elements of group {bad}; "
                              "sparse-24-bitmask keeps exactly 2 of every 4")
    return _scatter(values.reshape(-1), keep, shape)


def _scatter(values: torch.Tensor, keep: np.ndarray, shape: list[int]) -> torch.Tensor:
    out = torch.zeros(math.prod(shape), dtype=values.dtype)
    out[torch.from_numpy(np.flatnonzero(keep.reshape(-1)))] = values
    return out.reshape(shape)


def _positive_zero(t: torch.Tensor) -> torch.Tensor:
    """``t`` with ``-0.0`` turned into ``+0.0`` (every other value bit-identical)."""
    return torch.where(t == 0, torch.zeros((), dtype=t.dtype), t)


def _packbits(keep: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(keep.numpy(), axis=-1, bitorder="little"))


def encode_bitmask(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four ``sparse-bitmask`` parts of a 2-D float ``weight`` (``-0.0`` stored as ``+0.0``)."""
    w = _positive_zero(weight.detach().cpu().contiguous())
    keep = w != 0
    counts = keep.sum(dim=1)
    return {"shape": torch.tensor(list(w.shape), dtype=torch.int64), "compressed": w[keep].contiguous(),
            "bitmask": _packbits(keep), "row_offsets": torch.cumsum(counts, 0) - counts}


def is_24(weight: torch.Tensor) -> bool:
    """True when every group of four consecutive elements of each row has at most two nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all())


def encode_24(weight: torch.Tensor, name: str = "weight") -> dict[str, torch.Tensor]:
    """The three ``sparse-24-bitmask`` parts of a 2:4 ``weight``; a weight that is not 2:4 along
    its rows is an error (the reference would drop values)."""
    if not is_24(weight):
        raise CheckpointError(f"{name} {list(weight.shape)} is not 2:4 sparse along its rows (at most 2 nonzeros in "
                              "every 4, columns a multiple of 4); store it as sparse-bitmask")
    w = _positive_zero(weight.detach().cpu().contiguous())
    groups = (w != 0).reshape(-1, 4)
    # keep the nonzeros, then fill each group up to two with its first zero positions
    rank = torch.cumsum((~groups).to(torch.int64), dim=1)
    need = 2 - groups.sum(dim=1, keepdim=True)
    keep = (groups | (~groups & (rank <= need))).reshape(w.shape)
    return {"shape": torch.tensor(list(w.shape), dtype=torch.int64).reshape(-1, 1),
            "compressed": w[keep].reshape(w.shape[0], w.shape[1] // 2).contiguous(), "bitmask": _packbits(keep)}
