"""``act-sparse``: the down projection for an input with exact zeros (activation sparsity).

For an MLP whose hidden activation is made sparse in forward (top-k, CETT thresholds:
:mod:`sparsecraft.activations`), ``y = a W_down^T`` only needs the columns ``W_down[:, i]``
with ``a_i != 0``. The packed weight is the column-major copy ``W_down^T`` (hidden, out), built
once, so each needed column is one contiguous row; the C++ kernel ``act_sparse_mm``
(``csrc/activation_kernels.cpp``) lists the nonzero columns of each group of up to 8 input
rows and reads only those rows: (1 - activation sparsity) of the weight's bytes. Inputs of more
than :data:`MAX_KERNEL_ROWS` rows (prefill) use ``torch.mm`` on the same copy. Bytes: the same
as the dense weight.

This backend exploits zeros of the *input*, not of the weight, so ``auto`` only considers it
for layers whose input is known to be sparse (:func:`sparsecraft.kernels.convert` reads the
``sparsecraft_input_sparsity`` of the module around them).
"""

from __future__ import annotations

import torch

from sparsecraft.kernels.backend_native import NativeBackend
from sparsecraft.kernels.backends import BACKENDS, Packed
from sparsecraft.kernels.extension import ops

MAX_KERNEL_ROWS = 8  #: batch sizes the kernel is built for (decode); more rows go to torch.mm


@BACKENDS.register("act-sparse")
class ActivationSparse(NativeBackend):
    """Reads only the weight columns of nonzero inputs (column-major W^T, batch 1..8): for activation-sparse MLPs."""

    name = "act-sparse"
    input_sparse = True  #: exploits zeros of the input, not of the weight

    def pack(self, weight: torch.Tensor) -> Packed:
        return {"weight_t": weight.detach().t().contiguous().clone()}

    def matmul(self, packed: Packed, x: torch.Tensor, out_features: int) -> torch.Tensor:
        if x.shape[0] <= MAX_KERNEL_ROWS:
            return ops().act_sparse_mm(x.contiguous(), packed["weight_t"])
        return torch.mm(x, packed["weight_t"])

    def to_dense(self, packed: Packed, shape: tuple[int, int]) -> torch.Tensor:
        return packed["weight_t"].t()
