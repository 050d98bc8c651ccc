"""2:4 on NVIDIA GPUs: torch's semi-structured sparse tensors (``cuda-2:4`` backend).

On Ampere and newer GPUs, ``torch.sparse.to_sparse_semi_structured`` compresses a 2:4 weight
(fp16 / bf16) to its kept values + metadata and ``F.linear`` runs it on the sparse tensor
cores (cuSPARSELt or CUTLASS). This backend packs a CUDA fp16/bf16 2:4 weight that way; on a
machine without CUDA it reports itself unavailable, so ``auto`` never picks it and the tests
skip with that reason. ``benchmarks/cuda_semi_structured.py`` checks correctness and speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsecraft.kernels.backends import BACKENDS, Backend, Packed

MIN_ROWS, MIN_COLS = 32, 64  # shape constraints of the semi-structured kernels (multiples)


def semi_structured_available() -> tuple[bool, str]:
    """(usable here, reason if not)."""
    if not torch.cuda.is_available():
        return False, "CUDA is not available (torch semi-structured sparsity is CUDA-only)"
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return False, f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return False, "semi-structured sparsity needs an Ampere (sm80) or newer GPU"
    return True, ""


def is_two_four(weight: torch.Tensor) -> bool:
    """At most 2 nonzeros in every group of 4 consecutive inputs."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return int((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1).max()) <= 2


@BACKENDS.register("cuda-2:4")
class CudaSemiStructured(Backend):
    """``F.linear(x, to_sparse_semi_structured(W))`` for CUDA fp16/bf16 2:4 weights."""

    name = "cuda-2:4"

    def available(self) -> tuple[bool, str]:
        return semi_structured_available()

    def supports(self, weight: torch.Tensor) -> str | None:
        if weight.device.type != "cuda":
            return "semi-structured sparsity runs on CUDA weights only"
        if weight.dtype not in (torch.float16, torch.bfloat16):
            return f"semi-structured sparsity needs fp16 or bf16 (weight is {weight.dtype})"
        rows, cols = weight.shape
        if rows % MIN_ROWS or cols % MIN_COLS:
            return f"shape {rows}x{cols} is not a multiple of {MIN_ROWS}x{MIN_COLS}"
        if not is_two_four(weight):
            return "weight is not 2:4 sparse along the input dimension"
        return super().supports(weight)

    def pack(self, weight: torch.Tensor) -> Packed:
        sst = torch.sparse.to_sparse_semi_structured(weight.detach().contiguous())
        # the compressed tensor is a tensor subclass; it lives in the (non-buffer) cache entry
        return {"_sst": sst, "shape": torch.tensor(list(weight.shape))}

    def _sst(self, packed: Packed) -> torch.Tensor:
        return packed["_sst"]

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        return F.linear(x, self._sst(packed))

    def to_dense(self, packed: Packed, shape: tuple[int, int]) -> torch.Tensor:
        return self._sst(packed).to_dense()

    @staticmethod
    def nbytes(packed: Packed) -> int:
        sst = packed["_sst"]
        parts = [getattr(sst, a, None) for a in ("packed", "meta", "packed_t", "meta_t")]
        return sum(p.numel() * p.element_size() for p in parts if isinstance(p, torch.Tensor))
