"""Kernel layouts of packed linear layers (see ``csrc/qdot.h``), built from a layer's codes.

Every packed layer is a dict of tensors plus ``meta`` (int64: kind, out, in, bits, G, g, blk,
mstride, cstride) -- the argument list of ``torch.ops.sparsecraft_kernels.packed_linear``:

* ``kind`` 0 float32 dense ``[weight]``; 1 float32 bitmap ``[values, masks, rowoff]``;
* ``kind`` 2 int4/int8 dense ``[codes, scales, zeros]``: int4 codes in blocks of 32 (16 when the
  group is an odd multiple of 16) inputs, byte j = c[j] | c[j + blk/2] << 4;
* ``kind`` 3 int4/int8 sparse ``[codes, scales, zeros, masks, rowoff]``: per row and 64-input word a
  keep mask (g = 0: per input; g = 4/8/16: per group of g inputs) and the kept codes, int4 two per
  byte in order (byte j = c[2j] | c[2j + 1] << 4), each word starting on a byte; the code stream is
  padded with 64 bytes.

``meta[9]`` (``xbits``) 8 selects the int8-input kernels (``csrc/qdot_x8.h``: the input rounded to int8
per quantization group, integer dot products); they read one more part, ``csums`` (int32, (rows, in / G):
the sum of ``q - z`` over the kept inputs of every group), see :func:`with_int8_inputs`.

Scales are float16 (stored as int16 bits), zero points uint8, both (rows, in / G). Everything is
vectorized numpy (no Python loop over rows or words), so packing SmolLM2's 210 layers takes a few
seconds.
"""

from __future__ import annotations

import numpy as np
import torch

from sparsecraft.errors import SparsecraftError

F32_DENSE, F32_BITMAP, Q_DENSE, Q_SPARSE = 0, 1, 2, 3
PARTS = {F32_DENSE: ("weight",), F32_BITMAP: ("values", "masks", "rowoff"),
         Q_DENSE: ("codes", "scales", "zeros"), Q_SPARSE: ("codes", "scales", "zeros", "masks", "rowoff")}


def meta_tensor(kind: int, out: int, inp: int, bits: int = 0, group: int = 0, g: int = 0, blk: int = 32,
                mstride: int = 0, cstride: int = 0, xbits: int = 0) -> torch.Tensor:
    return torch.tensor([kind, out, inp, bits, group, g, blk, mstride, cstride, xbits], dtype=torch.int64)


def int4_block(group: int) -> int:
    return 32 if group % 32 == 0 else 16


def _u64(bits: np.ndarray) -> np.ndarray:
    """(rows, k*64) bool -> (rows, k) int64 words, bit j of word w = column 64w + j."""
    rows = bits.shape[0]
    packed = np.packbits(np.ascontiguousarray(bits), axis=1, bitorder="little")
    return packed.reshape(rows, -1).view("<u8").view(np.int64).reshape(rows, -1)


def pack_f32_dense(w: torch.Tensor) -> dict[str, torch.Tensor]:
    w = w.detach().to(torch.float32).contiguous().clone()
    return {"weight": w, "meta": meta_tensor(F32_DENSE, w.shape[0], w.shape[1])}


def pack_f32_bitmap(w: torch.Tensor) -> dict[str, torch.Tensor]:
    w = w.detach().to(torch.float32).cpu()
    out, inp = w.shape
    words = -(-inp // 64)
    keep = np.zeros((out, words * 64), dtype=bool)
    keep[:, :inp] = (w != 0).numpy()
    counts = keep.sum(1)
    rowoff = np.zeros(out + 1, dtype=np.int64)
    np.cumsum(counts, out=rowoff[1:])
    values = torch.cat([w[w != 0], torch.zeros(16)])
    return {"values": values, "masks": torch.from_numpy(_u64(keep)), "rowoff": torch.from_numpy(rowoff),
            "meta": meta_tensor(F32_BITMAP, out, inp, mstride=words)}


def _side(scale: torch.Tensor, zero: torch.Tensor) -> dict[str, torch.Tensor]:
    """float16 scales (as int16 bits: exact, they are float16 values) and uint8 zero points."""
    return {"scales": scale.detach().to(torch.float16).contiguous().view(torch.int16).clone(),
            "zeros": zero.detach().to(torch.uint8).contiguous().clone()}


def pack_q_dense(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Kind 2 from (out, in) uint8 codes and (out, in/G) scales / zero points."""
    out, inp = codes.shape
    group = inp // scale.shape[1]
    c = codes.numpy().astype(np.uint8)
    blk = int4_block(group)
    if bits == 8:
        data = c
    else:
        if inp % blk:
            raise SparsecraftError(f"int4 kernels need inputs ({inp}) divisible by {blk}")
        v = c.reshape(out, inp // blk, 2, blk // 2)
        data = (v[:, :, 0, :] | (v[:, :, 1, :] << 4)).reshape(out, inp // 2)
    data = np.ascontiguousarray(data)
    return {"codes": torch.from_numpy(data), **_side(scale, zero),
            "meta": meta_tensor(Q_DENSE, out, inp, bits, group, 0, blk, 0, data.shape[1])}


def pack_q_sparse(codes: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                  g: int = 0) -> dict[str, torch.Tensor]:
    """Kind 3 from (out, in) uint8 codes, the keep mask (for ``g`` > 0 constant on groups of ``g``
    inputs), scales and zero points."""
    out, inp = codes.shape
    group = inp // scale.shape[1]
    words = -(-inp // 64)
    kp = np.zeros((out, words * 64), dtype=bool)
    kp[:, :inp] = keep.numpy().astype(bool)
    if g:
        if inp % g:
            raise SparsecraftError(f"group bitmap of {g} needs inputs ({inp}) divisible by {g}")
        grp = kp.reshape(out, -1, g)
        if bool((grp.any(2) != grp.all(2)).any()):
            raise SparsecraftError(f"keep mask is not constant on groups of {g} inputs")
        per_row_bits = words * (64 // g)
        gb = np.zeros((out, -(-per_row_bits // 64) * 64), dtype=bool)
        gb[:, :per_row_bits] = grp[:, :, 0]
        masks = _u64(gb)
    else:
        masks = _u64(kp)
    cp = np.zeros((out, words * 64), dtype=np.uint8)
    cp[:, :inp] = codes.numpy()
    kw = kp.reshape(out * words, 64)
    n = kw.sum(1)  # kept per word
    size = n if bits == 8 else (n + 1) // 2
    wordoff = np.zeros(out * words + 1, dtype=np.int64)
    np.cumsum(size, out=wordoff[1:])
    stream = np.zeros(int(wordoff[-1]) + 64, dtype=np.uint8)
    widx, col = np.nonzero(kw)
    rank = (np.cumsum(kw, axis=1) - 1)[widx, col]
    vals = cp.reshape(out * words, 64)[widx, col]
    if bits == 8:
        stream[wordoff[widx] + rank] = vals
    else:
        lo = (rank & 1) == 0
        stream[wordoff[widx[lo]] + rank[lo] // 2] = vals[lo]
        stream[wordoff[widx[~lo]] + rank[~lo] // 2] |= (vals[~lo] << 4).astype(np.uint8)
    rowoff = np.ascontiguousarray(wordoff[::words][: out + 1]) if words else np.zeros(out + 1, dtype=np.int64)
    return {"codes": torch.from_numpy(stream), **_side(scale, zero), "masks": torch.from_numpy(masks),
            "rowoff": torch.from_numpy(rowoff),
            "meta": meta_tensor(Q_SPARSE, out, inp, bits, group, g, int4_block(group), masks.shape[1], 0)}


def parts_of(packed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The ``parts`` list of ``packed_linear`` for a packed layer, in the kernel's order."""
    parts = [packed[k] for k in PARTS[int(packed["meta"][0])]]
    return parts + [packed["csums"]] if int(packed["meta"][9]) == 8 else parts


def int8_inputs_unsupported(packed: dict[str, torch.Tensor]) -> str | None:
    """Why a packed layer cannot run with int8 inputs (``None`` if it can)."""
    kind, group = int(packed["meta"][0]), int(packed["meta"][4])
    if kind not in (Q_DENSE, Q_SPARSE):
        return "int8 inputs need int4/int8 codes (dense, bitmap or group-bitmap layout)"
    if group % 64:
        return f"int8 inputs need quantization groups that are multiples of 64, got {group}"
    return None


def with_int8_inputs(packed: dict[str, torch.Tensor], codes: torch.Tensor, keep: torch.Tensor | None = None,
                     zero: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The same packed layer run with int8 inputs (``xbits`` 8): adds ``csums`` from the (out, in) codes,
    the keep mask (``None``: every input) and the zero points (out, in / G)."""
    why = int8_inputs_unsupported(packed)
    if why:
        raise SparsecraftError(why)
    out, inp = codes.shape
    group, bits = int(packed["meta"][4]), int(packed["meta"][3])
    z = zero.detach().to(torch.int32).repeat_interleave(group, 1)
    d = codes.to(torch.int32) - z
    if keep is not None:
        d = d * keep.to(torch.int32)
    if int(packed["meta"][0]) == Q_SPARSE and bits == 8 and bool(((d < -128) | (d > 127)).any()):
        raise SparsecraftError("int8 inputs on sparse int8 codes need q - z in [-128, 127] (a symmetric grid)")
    csums = d.reshape(out, inp // group, group).sum(-1)
    if bool((csums.abs() > 32767).any()):
        raise SparsecraftError(f"int8 inputs need |sum(q - z)| <= 32767 per group; groups of {group} are too large")
    csums = csums.to(torch.int16).contiguous()
    meta = packed["meta"].clone()
    meta[9] = 8
    return {**{k: v for k, v in packed.items() if not k.startswith("_")}, "csums": csums, "meta": meta}


def packed_bytes(packed: dict[str, torch.Tensor]) -> int:
    """Bytes the kernel reads for this layer (every part except ``meta``)."""
    return sum(t.numel() * t.element_size() for k, t in packed.items() if k != "meta" and not k.startswith("_"))
