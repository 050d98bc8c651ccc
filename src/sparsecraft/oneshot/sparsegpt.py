"""SparseGPT (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot", ICML 2023): mask selection + optimal-brain-surgeon weight reconstruction.

For a layer with weight W (out x in) and calibration inputs X (in x tokens):

* H = (2/n) X X^T with n the number of calibration sequences, exactly the scale of the
  reference's ``add_batch`` (:meth:`sparsecraft.oneshot.stats.InputStats.hessian`); inputs that
  never fire (H_jj = 0, "dead") get H_jj = 1 and W[:, j] = 0; then ``percdamp * mean(diag H)``
  (0.01) is added to the diagonal;
* Hinv = the upper Cholesky factor U of H^-1 (H^-1 = U^T U);
* walk the columns in blocks of B = 128. Unstructured: at every block start, prune the
  floor(s * out * B) lowest of w^2 / [Hinv]_ii^2 over the whole (out x B) block. N:M: at every
  column i with i % M == 0, prune per row the M - N lowest of w^2 / [Hinv]_ii^2 among columns
  i..i+M-1. For each column i: q = w with pruned entries set to 0; err = (w - q) / Hinv_ii;
  W[:, i:end] -= err (x) Hinv[i, i:end]; after the block, W[:, end:] -= Err @ Hinv[block, end:].

Everything is float32 with TF32 disabled. The scale of H is part of the rule: without dead
inputs, H -> cH changes no choice (the mask score and the update are invariant and the damping
is relative), but the dead inputs' H_jj = 1 enters mean(diag H), so the damping (hence masks
and weights) follows the reference only on the reference's scale.
Documented deviations from the reference code: the unstructured count per block is exact
(floor; the reference's ``<= sorted[int(s * n)]`` prunes one more, and ties); for N:M the block
size is rounded down to a multiple of M so groups never straddle two blocks; N:M ties are
broken by position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.base import ONESHOT, OneShotPruner, fast_lowest_k_mask
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import NM, Block, Pattern, Unstructured, count_to_prune
from sparsecraft.quant.grid import parse_spec


def inverse_hessian_factor(H: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): U = upper Cholesky factor of (H + damp I)^-1 after the dead-input fix.

    ``H`` must be on the reference's scale, (2/n) X X^T (:meth:`InputStats.hessian`)."""
    H = H.detach().to(torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    U = torch.linalg.cholesky(Hinv, upper=True)
    return U, dead


@torch.no_grad()
def sparsegpt_prune(
    w: torch.Tensor,
    Hinv: torch.Tensor,
    dead: torch.Tensor,
    pattern: Pattern,
    sparsity: float,
    blocksize: int = 128,
    quantizer: Callable[..., torch.Tensor] | None = None,
    block_mask: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune and reconstruct the (out, in) matrix ``w``; returns (new W, keep mask).
    ``quantizer(j, block, k, q, pruned)``, if given, quantizes each column after pruning (the
    joint mode, :mod:`sparsecraft.oneshot.quantizer`). ``block_mask(W1, d)``, if given, chooses
    the pruned positions of each column block from its current weights and ``d = diag([H^-1])``
    instead of the pattern's rule (GQSA's groups, :func:`sparsecraft.oneshot.joint.group_sweep`)."""
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _prune(w, Hinv, dead, pattern, sparsity, blocksize, quantizer, block_mask)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32


def _prune(w, Hinv, dead, pattern, sparsity, blocksize, quantizer=None, block_mask=None):
    W = w.detach().to(torch.float32).clone()
    W[:, dead] = 0
    rows, cols = W.shape
    nm = pattern if isinstance(pattern, NM) else None
    if nm is not None:
        nm.check(rows, cols)
        blocksize = max(nm.m, blocksize - blocksize % nm.m)
        n_prune = nm.m - nm.n
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diagonal(Hinv1)
        if block_mask is not None:
            mask1 = block_mask(W1, d)
        elif nm is None:
            score = W1.pow(2) / d.pow(2).reshape(1, -1)
            mask1 = ~fast_lowest_k_mask(score, count_to_prune(sparsity, score.numel()))
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w_col = W1[:, i]
            if nm is not None and i % nm.m == 0:
                score = W1[:, i : i + nm.m].pow(2) / d[i : i + nm.m].pow(2).reshape(1, -1)
                idx = torch.argsort(score, dim=1, stable=True)[:, :n_prune]
                mask1[:, i : i + nm.m].scatter_(1, idx, True)
            q = w_col.masked_fill(mask1[:, i], 0.0)
            if quantizer is not None:
                q = quantizer(i1 + i, W1, i, q, mask1)
            Q1[:, i] = q
            err = (w_col - q) / d[i]
            W1[:, i:].sub_(torch.outer(err, Hinv1[i, i:]))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        if i2 < cols:
            W[:, i2:].sub_(Err1 @ Hinv[i1:i2, i2:])
    keep = ~pruned
    W.masked_fill_(pruned, 0.0)
    return W, keep


@ONESHOT.register("sparsegpt")
class SparseGPT(OneShotPruner):
    """Mask by w^2/[H^-1]_ii^2 per 128-column block, OBS update of the remaining weights;
    with ``quantize={"bits": 4, "group": 64, "sym": True}`` the kept weights are quantized in
    the same sweep (the paper's joint mode; :mod:`sparsecraft.oneshot.quantizer`)."""

    needs_hessian = True
    patterns = (Unstructured, NM, Block)

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01, quantize: Any = None) -> None:
        if blocksize < 1 or not 0 <= percdamp:
            raise SparsecraftError(f"bad sparsegpt options blocksize={blocksize}, percdamp={percdamp}")
        self.blocksize = blocksize
        self.percdamp = percdamp
        self.quant = None if quantize is None else parse_spec(quantize)

    def prune(self, w: torch.Tensor, stats: InputStats | None, pattern: Pattern, sparsity: float):
        if stats is None or stats.H is None:
            raise SparsecraftError(f"{self.registry_name} needs the calibration Hessian")  # type: ignore[attr-defined]
        key = f"hinv@{self.percdamp}"
        if key not in stats.cache:  # shared by every layer that reads the same input
            stats.cache[key] = inverse_hessian_factor(stats.hessian(), self.percdamp)
        Hinv, dead = stats.cache[key]
        from sparsecraft.oneshot.joint import joint_sweep  # joint.py imports this module

        return joint_sweep(w, Hinv, dead, pattern, sparsity, self.blocksize, self)
