"""Backends of :class:`~sparsecraft.kernels.SparseLinear`: how a weight is packed and multiplied.

A backend turns a dense weight ``W`` (out, in) into named packed tensors (stored as buffers of
the layer) and computes ``y = x @ W^T`` for a 2-D input ``x`` (N, in). Register one with
``@BACKENDS.register("name")``; ``auto`` is not a backend but a per-layer measured choice
(:mod:`sparsecraft.kernels.calibrate`).

Built in: ``dense`` (F.linear), ``dense-t`` (torch.mm with a pre-transposed weight),
``dense-addmm`` (torch.addmm), ``dense-mkldnn`` (oneDNN linear), ``dense-numpy`` (numpy), ``torch-csr`` (torch CSR,
int32 indices) here, and the C++ kernels ``csr16``, ``bitmap``, ``nm24`` in :mod:`sparsecraft.kernels.backend_native`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from sparsecraft.registry import Registry

Packed = dict[str, torch.Tensor]


class Backend:
    """Base class: ``pack`` once, ``matmul`` per call, ``to_dense`` for checks/reports."""

    name = "base"
    dense = False  # True for the dense calls (the speed reference)

    def available(self) -> tuple[bool, str]:
        """(usable on this machine, reason if not)."""
        return True, ""

    def supports(self, weight: torch.Tensor) -> str | None:
        """``None`` if this backend can run ``weight``, else the reason it cannot."""
        if weight.dim() != 2:
            return "weight is not 2-D"
        return None

    def pack(self, weight: torch.Tensor) -> Packed:
        raise NotImplementedError

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        raise NotImplementedError

    def to_dense(self, packed: Packed, shape: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def nbytes(packed: Packed) -> int:
        """Bytes of the packed tensors (cached helper objects, keys starting with ``_``, excluded)."""
        return sum(t.numel() * t.element_size() for k, t in packed.items() if not k.startswith("_"))


BACKENDS: Registry[type[Backend]] = Registry("kernel backend", package="sparsecraft.kernels")


def get_backend(name: str) -> Backend:
    """An instance of the backend registered as ``name``."""
    return BACKENDS.get(name)()


def backend_names() -> list[str]:
    return BACKENDS.names()


@BACKENDS.register("dense")
class DenseLinear(Backend):
    """``F.linear(x, W)`` (what ``nn.Linear`` calls)."""

    name = "dense"
    dense = True

    def pack(self, weight: torch.Tensor) -> Packed:
        return {"weight": weight.detach().contiguous().clone()}

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        return F.linear(x, packed["weight"])

    def to_dense(self, packed: Packed, shape: tuple[int, int]) -> torch.Tensor:
        return packed["weight"]


@BACKENDS.register("dense-t")
class DenseTransposed(DenseLinear):
    """``torch.mm(x, W^T)`` with ``W^T`` stored contiguous (sometimes faster at batch > 1)."""

    name = "dense-t"

    def pack(self, weight: torch.Tensor) -> Packed:
        return {"weight_t": weight.detach().t().contiguous().clone()}

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        return torch.mm(x, packed["weight_t"])

    def to_dense(self, packed: Packed, shape: tuple[int, int]) -> torch.Tensor:
        return packed["weight_t"].t()


@BACKENDS.register("dense-addmm")
class DenseAddmm(DenseTransposed):
    """``torch.addmm(0, x, W^T)``: another BLAS entry point (bias is added by the layer)."""

    name = "dense-addmm"

    def pack(self, weight: torch.Tensor) -> Packed:
        packed = super().pack(weight)
        packed["_zero"] = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        return packed

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        zero = packed.get("_zero")
        if zero is None or zero.dtype != x.dtype or zero.device != x.device:
            zero = packed["_zero"] = torch.zeros(out_features, dtype=x.dtype, device=x.device)
        return torch.addmm(zero, x, packed["weight_t"])


@BACKENDS.register("dense-mkldnn")
class DenseMkldnn(DenseLinear):
    """oneDNN linear (``torch._C._nn.mkldnn_linear``) on an oneDNN-layout weight, fp32 only."""

    name = "dense-mkldnn"

    def available(self) -> tuple[bool, str]:
        if not torch.backends.mkldnn.is_available():
            return False, "torch was built without oneDNN"
        return True, ""

    def supports(self, weight: torch.Tensor) -> str | None:
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            return "oneDNN linear is used for float32 CPU weights only"
        return super().supports(weight)

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        w = packed.get("_mkldnn")
        if w is None:  # oneDNN tensors cannot be buffers; build once per process
            w = packed["weight"].to_mkldnn()
            packed["_mkldnn"] = w
        return torch._C._nn.mkldnn_linear(x.contiguous().to_mkldnn(), w, None).to_dense()


@BACKENDS.register("dense-numpy")
class DenseNumpy(DenseLinear):
    """``x @ W^T`` through numpy's BLAS (sometimes the fastest dense call at batch 1)."""

    name = "dense-numpy"

    def supports(self, weight: torch.Tensor) -> str | None:
        if weight.dtype not in (torch.float32, torch.float64) or weight.device.type != "cpu":
            return "numpy path is for float32/float64 CPU weights"
        return super().supports(weight)

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        w = packed["weight"].numpy()
        return torch.from_numpy(x.detach().contiguous().numpy() @ w.T)


@BACKENDS.register("torch-csr")
class TorchCsr(Backend):
    """torch sparse CSR with int32 row pointers and column indices: ``(W_csr @ x^T)^T``."""

    name = "torch-csr"

    def pack(self, weight: torch.Tensor) -> Packed:
        with warnings.catch_warnings():  # "sparse CSR support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            csr = weight.detach().to_sparse_csr()
        return {
            "crow": csr.crow_indices().to(torch.int32),
            "col": csr.col_indices().to(torch.int32),
            "values": csr.values().clone(),
        }

    def _csr(self, packed: Packed, shape: tuple[int, int]) -> torch.Tensor:
        t = packed.get("_csr")
        if t is None or tuple(t.shape) != shape:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                t = torch.sparse_csr_tensor(
                    packed["crow"], packed["col"], packed["values"], size=shape, check_invariants=False
                )
            packed["_csr"] = t
        return t

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        shape = (out_features, x.shape[1])
        return torch.mm(self._csr(packed, shape), x.t()).t()

    def to_dense(self, packed: Packed, shape: tuple[int, int]) -> torch.Tensor:
        return self._csr(packed, shape).to_dense()
