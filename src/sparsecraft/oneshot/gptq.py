"""GPTQ (Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023): weight-only group quantization with
second-order error compensation, the dense-quantized baseline.

Per layer with calibration inputs X: H = (2/n) X X^T (dead inputs and damping as SparseGPT,
:func:`sparsecraft.oneshot.sparsegpt.inverse_hessian_factor`), U = upper Cholesky factor of
H^-1. Columns are quantized in order (blocks of 128, lazy batch updates); at column j:
q_j = quant(w_j) on its group's grid (:mod:`sparsecraft.quant.grid`, chosen at the group's first
column from the current weights), err = (w_j - q_j) / U_jj, and the later columns get
W[:, j+1:] -= err x U[j, j+1:]. This is SparseGPT's sweep with nothing pruned
(:func:`sparsecraft.oneshot.joint.joint_sweep`). No activation reordering (``act_order``), as the
reference's default.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.base import ONESHOT, OneShotPruner
from sparsecraft.oneshot.joint import joint_sweep
from sparsecraft.oneshot.sparsegpt import inverse_hessian_factor
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import Pattern, Unstructured
from sparsecraft.quant.grid import parse_spec


@ONESHOT.register("gptq")
class GPTQ(OneShotPruner):
    """Quantize every kept weight to a group grid with OBS error feedback (no pruning)."""

    needs_hessian = True
    patterns = (Unstructured,)

    def __init__(self, quantize: Any = None, blocksize: int = 128, percdamp: float = 0.01) -> None:
        if blocksize < 1 or not 0 <= percdamp:
            raise SparsecraftError(f"bad gptq options blocksize={blocksize}, percdamp={percdamp}")
        self.quant = parse_spec({} if quantize is None else quantize)
        self.blocksize = blocksize
        self.percdamp = percdamp

    def check_sparsity(self, sparsity: float, overrides: list[float]) -> None:
        if sparsity > 0 or any(s > 0 for s in overrides):
            raise SparsecraftError(
                f"gptq quantizes without pruning (sparsity must be 0, got {max([sparsity, *overrides])}); "
                "for sparse + quantized use method 'sparsegpt' or 'gqsa' with quantize="
            )

    def prune(self, w: torch.Tensor, stats: InputStats | None, pattern: Pattern, sparsity: float):
        if stats is None or stats.H is None:
            raise SparsecraftError("gptq needs the calibration Hessian")
        key = f"hinv@{self.percdamp}"
        if key not in stats.cache:
            stats.cache[key] = inverse_hessian_factor(stats.hessian(), self.percdamp)
        Hinv, dead = stats.cache[key]
        return joint_sweep(w, Hinv, dead, Unstructured(), 0.0, self.blocksize, self)
