"""One OBS column sweep for every pattern, with or without quantization.

:func:`joint_sweep` is what SparseGPT, GPTQ and GQSA call for one layer:

* unstructured / N:M: SparseGPT's sweep (:func:`sparsecraft.oneshot.sparsegpt.sparsegpt_prune`)
  with the column quantizer plugged in (SparseGPT's joint mode, Frantar & Alistarh 2023, Sec. 3.5;
  GPTQ is the same sweep with nothing pruned);
* group sparsity (pattern ``block:1xg``: ``g`` consecutive inputs of a row kept or dropped
  together, GQSA's structured groups): :func:`group_sweep` below.

:func:`group_sweep` is SparseGPT's sweep with the mask chosen per group: at every column block
start, the saliency of a group is the sum of SparseGPT's per-weight saliencies
``w^2 / [H^-1]_jj^2`` over its ``g`` weights, and the ``floor(s * groups)`` least salient groups of
the (rows x block) slice are pruned (the block-wise adaptive mask selection of SparseGPT, applied
to groups). Then, column by column, pruned weights are set to 0, kept ones quantized, and the
error ``(w - q) / [H^-1]_jj`` is spread over the later columns (OBS update). The block size is
rounded to a multiple of lcm(quantization group, pattern group) so no group straddles two blocks.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.base import fast_lowest_k_mask
from sparsecraft.oneshot.quantizer import ColumnQuantizer
from sparsecraft.oneshot.sparsegpt import sparsegpt_prune
from sparsecraft.patterns import NM, Block, Pattern, Unstructured, count_to_prune


def _unit(pattern: Pattern, group: int | None) -> int:
    unit = group or 1
    if isinstance(pattern, NM):
        unit = math.lcm(unit, pattern.m)
    if isinstance(pattern, Block):
        unit = math.lcm(unit, pattern.w)
    return unit


@torch.no_grad()
def group_sweep(w: torch.Tensor, Hinv: torch.Tensor, dead: torch.Tensor, g: int, sparsity: float,
                blocksize: int, quantizer: ColumnQuantizer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-sparse OBS sweep (module docstring): SparseGPT's sweep with the mask of each column
    block chosen per group of ``g`` inputs; returns (new W, keep mask)."""
    cols = w.shape[1]
    if cols % g or blocksize % g:
        raise SparsecraftError(
            f"group sparsity of {g} needs inputs ({cols}) and block size ({blocksize}) divisible by {g}"
        )

    def group_mask(W1: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        rows, count = W1.shape
        score = (W1.pow(2) / d.pow(2).reshape(1, -1)).reshape(rows, count // g, g).sum(-1)
        keep_groups = fast_lowest_k_mask(score, count_to_prune(sparsity, score.numel()))
        return (~keep_groups).repeat_interleave(g, dim=1)

    return sparsegpt_prune(w, Hinv, dead, Unstructured(), sparsity, blocksize, quantizer, block_mask=group_mask)


def joint_sweep(w: torch.Tensor, Hinv: torch.Tensor, dead: torch.Tensor, pattern: Pattern, sparsity: float,
                blocksize: int, pruner: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune (and, when ``pruner.quant`` is set, quantize) one (rows, cols) row view; the chosen
    scales are left in ``pruner.last_quant`` for the caller to attach to the layer."""
    spec = getattr(pruner, "quant", None)
    rows, cols = w.shape
    quantizer = ColumnQuantizer(spec, rows, cols, w.device) if spec is not None else None
    unit = _unit(pattern, spec.group if spec is not None else None)
    if unit > 1:
        blocksize = max(unit, blocksize - blocksize % unit)
    if isinstance(pattern, Block):
        if pattern.h != 1:
            raise SparsecraftError(
                f"{pruner.registry_name} prunes groups of consecutive inputs inside one row: use pattern "
                f"'block:1x{pattern.w}', not {pattern.spec()!r}"
            )
        new_w, keep = group_sweep(w, Hinv, dead, pattern.w, sparsity, blocksize, quantizer)
    else:
        new_w, keep = sparsegpt_prune(w, Hinv, dead, pattern, sparsity, blocksize, quantizer)
    pruner.last_quant = quantizer.state() if quantizer is not None else None
    return new_w, keep
