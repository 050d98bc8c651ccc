"""An independent reference for the OBS column sweep with quantization (GPTQ; SparseGPT's joint
mode; GQSA's group mask), written from the papers' rules in float64 with one column at a time and
the full inverse-Hessian factor (no blocks, no lazy updates, none of the library's helpers)."""

from __future__ import annotations

import math

import torch


def grid(cols: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (scale, zero) of GPTQ's rule, symmetric = [-max|w|, max|w|], scale rounded to
    float16 (the library's documented storage rule)."""
    maxq = 2**bits - 1
    lo = torch.clamp(cols.min(1).values, max=0.0)
    hi = torch.clamp(cols.max(1).values, min=0.0)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = -hi
    empty = (lo == 0) & (hi == 0)
    lo[empty], hi[empty] = -1.0, 1.0
    scale = ((hi - lo) / maxq).float().clamp(2.0**-24, 65504).half().double().clamp(min=2.0**-24)
    zero = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-lo / scale).clamp(0, maxq)
    return scale, zero


def upper_factor(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    H = H.double().clone()
    H += percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=torch.float64)
    return torch.linalg.cholesky(torch.linalg.inv(H), upper=True)


def obs_sweep(w: torch.Tensor, H: torch.Tensor, bits: int | None, group: int, sym: bool,
              pruned: torch.Tensor | None = None, percdamp: float = 0.01) -> torch.Tensor:
    """Quantize (and zero ``pruned``) column by column with OBS error feedback; returns the new W."""
    W = w.double().clone()
    U = upper_factor(H, percdamp)
    rows, cols = W.shape
    pruned = torch.zeros_like(W, dtype=torch.bool) if pruned is None else pruned
    scale = zero = None
    for j in range(cols):
        if bits is not None and j % group == 0:
            scale, zero = grid(W[:, j:j + group].masked_fill(pruned[:, j:j + group], 0.0), bits, sym)
        q = W[:, j].masked_fill(pruned[:, j], 0.0)
        if bits is not None:
            q = scale * (torch.clamp(torch.round(q / scale) + zero, 0, 2**bits - 1) - zero)
        err = (W[:, j] - q) / U[j, j]
        W[:, j + 1:] -= torch.outer(err, U[j, j + 1:])
        W[:, j] = q
    return W


def first_block_mask(w: torch.Tensor, H: torch.Tensor, sparsity: float, g: int = 1,
                     percdamp: float = 0.01) -> torch.Tensor:
    """Pruned mask of one column block (cols <= 128): the floor(s * units) least salient units
    (single weights, or groups of g inputs) by w^2 / [U]_jj^2 summed over the unit."""
    U = upper_factor(H, percdamp)
    score = w.double().pow(2) / torch.diag(U).pow(2)
    rows, cols = w.shape
    units = score.reshape(rows, cols // g, g).sum(-1).reshape(-1)
    k = math.floor(sparsity * units.numel() + 1e-6)
    order = torch.argsort(units, stable=True)[:k]
    mask = torch.zeros(units.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.reshape(rows, cols // g).repeat_interleave(g, 1)
