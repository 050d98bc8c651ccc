"""The C++ kernels as backends: ``csr16``, ``bitmap`` and ``nm24`` (fp32 weights).

Packing (bytes per weight at sparsity ``s``, fp32 values):

* ``csr16``: values + uint16 column indices + int64 row offsets: ``(1-s)*6`` (+8 per row).
  Needs ``in_features <= 65536``.
* ``bitmap``: one bit per weight in uint64 words along each row + the kept values row by row
  (padded with 16 zeros): ``(1-s)*4 + 1/8`` (+8 per row). Works for any pattern.
* ``nm24``: 2:4 along the input dimension -- per group of 4 columns the 2 kept values (a
  group with fewer nonzeros is padded with explicit zeros) and their 2-bit positions:
  ``0.5*4 + 0.5*2/8 = 2.125`` bytes per weight. Needs ``in_features % 32 == 0``.

The kernels themselves are in ``csrc/sparse_kernels.cpp`` (see there for the loops).
"""

from __future__ import annotations

import numpy as np
import torch

from sparsecraft.kernels.backends import BACKENDS, Backend, Packed
from sparsecraft.kernels.extension import extension_status, ops


class NativeBackend(Backend):
    def available(self) -> tuple[bool, str]:
        ok, reason = extension_status()
        return ok, ("" if ok else f"C++ kernels unavailable: {reason}")

    def supports(self, weight: torch.Tensor) -> str | None:
        if weight.dtype != torch.float32:
            return f"the C++ kernels are float32 only (weight is {weight.dtype})"
        if weight.device.type != "cpu":
            return "the C++ kernels run on CPU only"
        return super().supports(weight)


def _row_offsets(keep: torch.Tensor) -> torch.Tensor:
    counts = keep.sum(dim=1, dtype=torch.int64)
    return torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])


@BACKENDS.register("csr16")
class Csr16(NativeBackend):
    """CSR with uint16 column indices; batch 1: scalar loop with 8 accumulators, batch > 1 runs over x^T."""

    name = "csr16"

    def supports(self, weight: torch.Tensor) -> str | None:
        if weight.dim() == 2 and weight.shape[1] > 65536:
            return f"in_features {weight.shape[1]} > 65536 does not fit uint16 column indices"
        return super().supports(weight)

    def pack(self, weight: torch.Tensor) -> Packed:
        w = weight.detach().cpu()
        keep = w != 0
        cols = keep.nonzero()[:, 1].numpy().astype(np.uint16).view(np.int16)
        return {
            "values": w[keep].contiguous(),
            "cols": torch.from_numpy(cols.copy()),
            "rowptr": _row_offsets(keep),
        }

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        return ops().csr16_mm(packed["values"], packed["cols"], packed["rowptr"], x, x.shape[1])

    def to_dense(self, packed: Packed, shape: tuple[int, int]) -> torch.Tensor:
        rows = torch.repeat_interleave(torch.arange(shape[0]), packed["rowptr"].diff())
        cols = torch.from_numpy(packed["cols"].numpy().view(np.uint16).astype(np.int64))
        out = torch.zeros(shape, dtype=packed["values"].dtype)
        out[rows, cols] = packed["values"]
        return out


@BACKENDS.register("bitmap")
class Bitmap(NativeBackend):
    """Bitmap + packed values; batch 1 uses AVX-512 expand-loads (any sparsity pattern)."""

    name = "bitmap"

    def pack(self, weight: torch.Tensor) -> Packed:
        w = weight.detach().cpu()
        keep = w != 0
        out, cols = keep.shape
        words = max(1, -(-cols // 64))
        bits = np.zeros((out, words * 64), dtype=bool)
        bits[:, :cols] = keep.numpy()
        packed = np.packbits(bits, axis=1, bitorder="little")  # (out, words*8) uint8
        masks = packed.view("<u8").view(np.int64).reshape(out, words)
        pad = torch.zeros(16, dtype=w.dtype)  # the kernel loads 16 floats at a time
        return {
            "values": torch.cat([w[keep], pad]),
            "masks": torch.from_numpy(masks.copy()),
            "rowoff": _row_offsets(keep),
        }

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        return ops().bitmap_mm(packed["values"], packed["masks"], packed["rowoff"], x, x.shape[1])

    def to_dense(self, packed: Packed, shape: tuple[int, int]) -> torch.Tensor:
        m = packed["masks"].numpy().view("<u8").view(np.uint8)
        bits = np.unpackbits(m.reshape(shape[0], -1), axis=1, bitorder="little")[:, : shape[1]]
        out = torch.zeros(shape, dtype=packed["values"].dtype)
        nnz = int(packed["rowoff"][-1])
        out[torch.from_numpy(bits.astype(bool))] = packed["values"][:nnz]
        return out


@BACKENDS.register("nm24")
class NM24(NativeBackend):
    """2:4 packed (values + 2-bit positions), AVX-512 permutes pick the matching x lanes."""

    name = "nm24"

    def supports(self, weight: torch.Tensor) -> str | None:
        reason = super().supports(weight)
        if reason:
            return reason
        if weight.shape[1] % 32:
            return f"in_features {weight.shape[1]} is not a multiple of 32"
        per_group = (weight.detach().reshape(weight.shape[0], -1, 4) != 0).sum(-1)
        if int(per_group.max()) > 2:
            return "weight is not 2:4 sparse along the input dimension"
        return None

    def pack(self, weight: torch.Tensor) -> Packed:
        w = weight.detach().cpu()
        out, cols = w.shape
        groups = w.reshape(out, cols // 4, 4)
        pos = torch.arange(4)
        # nonzeros first (lowest column first), then zero slots to pad groups with < 2 nonzeros
        score = (groups != 0).to(torch.int64) * 8 + (3 - pos)
        top = score.topk(2, dim=-1).indices.sort(dim=-1).values  # (out, groups, 2)
        values = groups.gather(-1, top).reshape(out, cols // 2)
        p = top.reshape(out, cols // 32, 16).to(torch.int64)
        shifts = 2 * torch.arange(16, dtype=torch.int64)
        words = (p << shifts).sum(-1)  # < 2**32
        words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
        return {"values": values.contiguous(), "pos": words.contiguous()}

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        return ops().nm24_mm(packed["values"], packed["pos"], x, x.shape[1])

    def to_dense(self, packed: Packed, shape: tuple[int, int]) -> torch.Tensor:
        out, cols = shape
        words = packed["pos"].to(torch.int64) & 0xFFFFFFFF
        p = (words.unsqueeze(-1) >> (2 * torch.arange(16))) & 3  # (out, cols/32, 16)
        p = p.reshape(out, cols // 4, 2)
        dense = torch.zeros(out, cols // 4, 4, dtype=packed["values"].dtype)
        dense.scatter_(-1, p, packed["values"].reshape(out, cols // 4, 2))
        return dense.reshape(out, cols)
