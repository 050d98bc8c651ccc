"""The quantized C++ kernels as backends: ``quant-dense``, ``quant-bitmap``, ``quant-group``.

They run layers quantized by :mod:`sparsecraft.quant` (GPTQ, SparseGPT's joint mode, GQSA; the
weight holds the dequantized floats, its module the scales): the codes are re-derived exactly
from the weight and packed in the kernel layouts of :mod:`sparsecraft.kernels.quant_pack`, and
``torch.ops.sparsecraft_kernels.packed_linear`` dequantizes in registers (``csrc/qdot.h``).

Bytes per weight read by the kernel (int4, groups of 64, ``s`` = sparsity):

* ``quant-dense``: 0.5 + 3/64 (float16 scale + uint8 zero point per group) -- the dense
  quantized reference, chosen for every quantized layer unless a sparse one is measurably faster;
* ``quant-bitmap``: (1-s)/2 + 1/8 + 3/64 (any pattern);
* ``quant-group``: (1-s)/2 + 1/(8g) + 3/64 for group sparsity (g = 16, 8 or 4 consecutive inputs
  kept or dropped together, GQSA).

int8: codes cost 1 byte instead of 0.5.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsecraft.kernels.backend_native import NativeBackend
from sparsecraft.kernels.backends import BACKENDS, Packed
from sparsecraft.kernels.extension import ops
from sparsecraft.kernels.quant_pack import pack_q_dense, pack_q_sparse, parts_of
from sparsecraft.layout import layout_for
from sparsecraft.quant.state import get_quant

GROUPS = (16, 8, 4)


def _codes(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor, object]:
    st = get_quant(linear)
    assert st is not None
    w = linear.weight.detach().cpu()
    rows = layout_for(linear, w).to_rows(w)
    return st.codes(rows, type(linear).__name__), rows, st


def group_size(nz: torch.Tensor, bits: int = 4) -> int | None:
    """The group size g in 16, 8, 4 whose group bitmap layout (1 bit per g inputs + the codes of
    every group holding a nonzero) is the smallest, if it is smaller than the element bitmap
    layout (1 bit per input + the codes of the nonzeros); else ``None``. GQSA's output, whose
    kept groups are dense but for a few codes that quantize to 0, picks its own g."""
    rows, cols = nz.shape
    best, best_bits = None, cols * rows + int(nz.sum()) * bits  # element bitmap
    for g in GROUPS:
        if cols % g == 0:
            stored = int(nz.reshape(rows, -1, g).any(-1).sum())
            size = rows * cols // g + stored * g * bits
            if size < best_bits:
                best, best_bits = g, size
    return best


class QuantBackend(NativeBackend):
    """Base: packs from a quantized ``nn.Linear`` (``pack_linear``), not from a bare weight."""

    quantized = True

    def supports(self, weight: torch.Tensor) -> str | None:
        return None  # the layer-level check is supports_linear

    def supports_linear(self, linear: nn.Module) -> str | None:
        avail, why = self.available()
        if not avail:
            return why
        st = get_quant(linear)
        if st is None:
            return "the layer is not quantized (prune with quantize=... first)"
        if not isinstance(linear, nn.Linear):
            return f"{type(linear).__name__} is not an nn.Linear"
        if st.spec.group % 16 or linear.in_features % st.spec.group:
            return f"group {st.spec.group} must be a multiple of 16 dividing {linear.in_features} inputs"
        return None

    def pack(self, weight: torch.Tensor) -> Packed:
        raise NotImplementedError(f"{self.name} packs quantized layers: use pack_linear(layer)")

    def pack_linear(self, linear: nn.Module) -> Packed:
        raise NotImplementedError

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        parts = packed.get("_parts")
        if parts is None:
            parts = packed["_parts"] = parts_of(packed)
            packed["_meta"] = packed["meta"].tolist()
        return ops().packed_linear(x, parts, None, packed["_meta"])

    def to_dense(self, packed: Packed, shape: tuple[int, int]) -> torch.Tensor:
        """The dequantized weight, through the kernel itself (x = identity: every output is one
        exact product, so the result is the stored weight bit for bit)."""
        eye = torch.eye(shape[1], dtype=torch.float32)
        return self.matmul(packed, eye, shape[0]).t().contiguous()


@BACKENDS.register("quant-dense")
class QuantDense(QuantBackend):
    """int4/int8 codes of every weight + float16 scales: the dense quantized kernel."""

    name = "quant-dense"
    dense = True  # the reference a sparse quantized kernel must beat

    def pack_linear(self, linear: nn.Module) -> Packed:
        codes, _, st = _codes(linear)
        return pack_q_dense(codes, st.scale, st.zero, st.spec.bits)


@BACKENDS.register("quant-bitmap")
class QuantBitmap(QuantBackend):
    """Bitmap + int4/int8 codes of the nonzero weights (any sparsity pattern)."""

    name = "quant-bitmap"

    def pack_linear(self, linear: nn.Module) -> Packed:
        codes, rows, st = _codes(linear)
        return pack_q_sparse(codes, rows != 0, st.scale, st.zero, st.spec.bits, 0)


@BACKENDS.register("quant-group")
class QuantGroup(QuantBackend):
    """Group bitmap (1 bit per g = 16/8/4 inputs) + codes of the kept groups (GQSA's layout)."""

    name = "quant-group"

    def supports_linear(self, linear: nn.Module) -> str | None:
        why = super().supports_linear(linear)
        if why:
            return why
        st = get_quant(linear)
        if group_size(linear.weight.detach() != 0, st.spec.bits if st else 4) is None:
            return "zeros do not come in groups of 16, 8 or 4 consecutive inputs"
        return None

    def pack_linear(self, linear: nn.Module) -> Packed:
        codes, rows, st = _codes(linear)
        nz = rows != 0
        g = group_size(nz, st.spec.bits)
        assert g is not None
        keep = nz.reshape(nz.shape[0], -1, g).any(-1).repeat_interleave(g, 1)
        return pack_q_sparse(codes, keep, st.scale, st.zero, st.spec.bits, g)
