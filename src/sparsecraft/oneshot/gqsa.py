"""GQSA (Zeng et al., "GQSA: Group Quantization and Sparsity for Accelerating Large Language
Model Inference", 2024/2025): structured group sparsity + group-wise weight-only quantization.

The pattern: in every row of a weight, the inputs are cut into groups of ``g`` consecutive
weights (g in 4, 8, 16) and whole groups are kept or dropped (pattern ``block:1xg``); the kept
weights are integers on a group grid (int4/int8, ``quantize={"bits", "group", "sym"}``). Stored
as a group bitmap + the kept groups' codes + scales (format ``qgroup``), a 50%-sparse int4 layer
costs about 0.25 + 1/(8g) + 2/group_q bytes per weight, and a GEMV reads the activations of a
kept group contiguously -- no gather.

The paper's two stages, and how they are done here:

1. **BQPO, block-wise prune-and-quantize with calibration.** The model is processed one
   transformer block at a time on calibration data (:mod:`sparsecraft.oneshot.blockwise`: each
   block sees the outputs of the already compressed blocks before it). Per layer, the groups and
   the codes are chosen by one OBS column sweep (:func:`sparsecraft.oneshot.joint.group_sweep`):
   group saliency = sum over the group of SparseGPT's ``w^2 / [H^-1]_jj^2``, the least salient
   groups of each 128-column slice are pruned, kept weights are quantized GPTQ-style and every
   pruning/quantization error is compensated on the later columns. *Departure:* the paper
   optimizes each block by gradient descent on the block's output error; the second-order
   reconstruction here solves the same per-layer least-squares problem in closed form (no
   learning rate, no epochs), which is what a 2-core CPU can afford.
2. **E2E-OQP, end-to-end tuning of the quantization parameters.** The integer codes and the
   mask are frozen and only the scales are trained, end to end, on the calibration windows
   (:func:`sparsecraft.oneshot.scale_tuning.tune_scales`, through the library's recovery loop,
   loss ``lm`` (next-token cross-entropy) or ``squarehead`` (distillation from the dense model)).
   Optional: ``sparsecraft prune --method gqsa --tune-steps N``.

The Hessian is SparseGPT's ``(2/n) X X^T`` (:meth:`InputStats.hessian`), so dead inputs get the
same damping as in SparseGPT and the cached factor is the one SparseGPT would compute. What the
pattern costs on a small model (SmolLM2-135M: groups of 16 at 50% leave 2.5-3.8x the layer error
of 2:4; the score, the OBS update and the grids were checked) is measured in
``docs/quantization.md`` ("GQSA on SmolLM2-135M") and ``benchmarks/bench_gqsa_layer_error.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.base import ONESHOT, OneShotPruner
from sparsecraft.oneshot.joint import joint_sweep
from sparsecraft.oneshot.sparsegpt import inverse_hessian_factor
from sparsecraft.oneshot.stats import InputStats
from sparsecraft.patterns import Block, Pattern, Unstructured, parse_pattern
from sparsecraft.quant.grid import parse_spec

GROUPS = (4, 8, 16)


@ONESHOT.register("gqsa")
class GQSA(OneShotPruner):
    """Group sparsity (``group`` consecutive inputs kept or dropped together) + group quantization,
    pruned and quantized in one OBS sweep per layer, block by block."""

    needs_hessian = True
    patterns = (Unstructured, Block)

    def __init__(self, group: int = 16, quantize: Any = None, blocksize: int = 128, percdamp: float = 0.01) -> None:
        if isinstance(group, bool) or group not in GROUPS:
            raise SparsecraftError(f"gqsa group must be one of {', '.join(map(str, GROUPS))}, got {group!r}")
        if blocksize < 1 or not 0 <= percdamp:
            raise SparsecraftError(f"bad gqsa options blocksize={blocksize}, percdamp={percdamp}")
        self.group = group
        self.quant = parse_spec({} if quantize is None else quantize)
        self.blocksize = blocksize
        self.percdamp = percdamp

    def check_pattern(self, pattern: Pattern) -> Pattern:
        pattern = parse_pattern(pattern)
        if isinstance(pattern, Unstructured):
            return Block(1, self.group)
        if isinstance(pattern, Block) and pattern.h == 1 and pattern.w in GROUPS:
            return pattern
        raise SparsecraftError(
            f"gqsa prunes groups of consecutive inputs: pattern 'block:1xG' with G in "
            f"{', '.join(map(str, GROUPS))} (or leave the pattern unstructured and pass group=G), "
            f"got {pattern.spec()!r}"
        )

    def prune(self, w: torch.Tensor, stats: InputStats | None, pattern: Pattern, sparsity: float):
        if stats is None or stats.H is None:
            raise SparsecraftError("gqsa needs the calibration Hessian")
        key = f"hinv@{self.percdamp}"
        if key not in stats.cache:
            stats.cache[key] = inverse_hessian_factor(stats.hessian(), self.percdamp)
        Hinv, dead = stats.cache[key]
        return joint_sweep(w, Hinv, dead, pattern, sparsity, self.blocksize, self)
