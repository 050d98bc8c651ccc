"""``prune_model``: one-shot pruning of a transformer with calibration data.

    from sparsecraft.oneshot import prune_model
    result = prune_model(model, calib_ids, method="sparsegpt", sparsity=0.5, pattern="2:4")
    print(result.report)

Orchestration only: the maths of each method is in its own module (magnitude, wanda,
sparsegpt, owl). Calibrated methods run the sequential protocol of
:mod:`sparsecraft.oneshot.blockwise`; magnitude needs no data. Final masks are attached with
:func:`sparsecraft.masks.set_mask`, so :func:`sparsecraft.report` and :func:`sparsecraft.save`
see them.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import MaskMeta, set_mask
from sparsecraft.oneshot.base import OneShotPruner, make_pruner
from sparsecraft.oneshot.blockwise import BlockInput, batched, block_forward, block_targets, find_blocks, run_sequential
from sparsecraft.oneshot.owl import outlier_ratio, owl_sparsities
from sparsecraft.oneshot.stats import StatsCollector
from sparsecraft.oneshot.wanda import wanda_scores
from sparsecraft.patterns import NM, Pattern, parse_pattern
from sparsecraft.report import SparsityReport, report
from sparsecraft.targets import Target


@dataclass
class OneShotResult:
    """What :func:`prune_model` did."""

    method: str
    pattern: str
    sparsity: float
    report: SparsityReport
    wall_time_s: float
    block_sparsities: list[float] = field(default_factory=list)
    owl_ratios: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "pattern": self.pattern,
            "sparsity": self.sparsity,
            "true_sparsity": self.report.sparsity,
            "wall_time_s": round(self.wall_time_s, 3),
            "block_sparsities": self.block_sparsities,
            "owl_ratios": self.owl_ratios,
        }


def _progress(desc: str, enabled: bool):
    def wrap(it):
        return tqdm(it, desc=desc, file=sys.stderr, disable=not enabled, leave=False)

    return wrap


def _collect(block: nn.Module, inputs: list[BlockInput], targets: list[Target], hessian: bool) -> StatsCollector:
    """Run ``block`` on every captured batch with hooks on its targets."""
    collector = StatsCollector({t.module_name: t.module for t in targets}, hessian=hessian)
    with collector:
        for inp in inputs:
            collector.new_pass()
            block_forward(block, inp)
    return collector


@torch.no_grad()
def _prune_target(pruner, t: Target, stats, pattern, sparsity: float, method: str) -> None:
    layout = t.layout
    w = layout.to_rows(t.param.detach()).to(torch.float32)
    new_w, keep = pruner.prune(w, stats, pattern, sparsity)
    if new_w is not None:
        t.param.data.copy_(layout.from_rows(new_w).to(t.param.dtype))
    achieved = 1.0 - float(keep.sum()) / keep.numel()
    set_mask(t.module, layout.from_rows(keep), t.param_name, MaskMeta(pattern.spec(), achieved, method))


def prune_model(
    model: nn.Module,
    calib: torch.Tensor | Sequence[Any] | None = None,
    method: str = "wanda",
    sparsity: float = 0.5,
    pattern: Any = "unstructured",
    *,
    owl: bool = False,
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    batch_size: int = 8,
    blocksize: int = 128,
    percdamp: float = 0.01,
    progress: bool = True,
) -> OneShotResult:
    """Prune every Linear of ``model``'s block stack in one shot, in place.

    Args:
        calib: (n, seqlen) token ids, or a list of batches (id tensors or dicts of model
            inputs). Needed by wanda, sparsegpt and OWL.
        method: ``magnitude``, ``wanda`` or ``sparsegpt``.
        sparsity: fraction of zeros per layer (mean over blocks with OWL; ignored by N:M).
        pattern: ``unstructured`` or N:M (``"2:4"``, ``"4:8"``); magnitude/wanda also ``row``.
        owl: non-uniform block sparsities from outlier ratios (unstructured only).
        targets / ignore: regexes on weight names selecting / excluding layers (default: every
            Linear inside the blocks; embeddings and the LM head are never touched).
        blocksize, percdamp: SparseGPT's column block and dampening.
    """
    if not 0.0 <= float(sparsity) <= 1.0:
        raise SparsecraftError(f"sparsity must be in [0, 1], got {sparsity}")
    kwargs = {"blocksize": blocksize, "percdamp": percdamp} if method == "sparsegpt" else {}
    pruner = make_pruner(method, **kwargs)
    pat = pruner.check_pattern(parse_pattern(pattern))
    if owl and isinstance(pat, NM):
        raise SparsecraftError("OWL sets per-block unstructured sparsities; it cannot be combined with N:M")
    stack = find_blocks(model)
    per_block = block_targets(model, stack, targets, ignore)
    for ts in per_block:
        for t in ts:
            pat.check(t.layout.rows, t.layout.cols, t.name)
    needs_data = pruner.needs_calibration or owl
    batches = batched(calib, batch_size) if calib is not None else []
    if needs_data and not batches:
        raise SparsecraftError(f"{method}{' + OWL' if owl else ''} needs calibration data")
    t0 = time.perf_counter()
    block_s = [float(sparsity)] * len(per_block)
    ratios = None
    if owl:
        ratios = owl_ratios(model, batches, per_block, owl_m, progress)
        block_s = owl_sparsities(ratios, float(sparsity), owl_lambda)
    prune_blocks(model, batches, pruner, pat, per_block, block_s, method, progress)
    wall = time.perf_counter() - t0
    names = [t.name for ts in per_block for t in ts]
    rep = report(model, include=[f"^{re.escape(n)}$" for n in names])
    return OneShotResult(method + ("+owl" if owl else ""), pat.spec(), float(sparsity), rep, wall,
                         block_s, ratios)


def prune_blocks(
    model: nn.Module,
    batches: list[Any],
    pruner: OneShotPruner,
    pattern: Pattern,
    per_block: list[list[Target]],
    block_sparsities: Sequence[float],
    method: str,
    progress: bool = True,
) -> None:
    """Prune the targets of every block ``i`` at ``block_sparsities[i]`` (the sequential
    protocol for calibrated methods, block by block without data for magnitude)."""
    if len(block_sparsities) != len(per_block):
        raise SparsecraftError(f"{len(block_sparsities)} block sparsities for {len(per_block)} blocks")
    stack = find_blocks(model)

    def prune_block(i: int, block: nn.Module, inputs: list[BlockInput]) -> None:
        ts = per_block[i]
        if not ts:
            return
        stats = {}
        if pruner.needs_calibration:
            stats = _collect(block, inputs, ts, pruner.needs_hessian).stats
        for t in ts:
            _prune_target(pruner, t, stats.get(t.module_name), pattern, float(block_sparsities[i]), method)

    if pruner.needs_calibration:
        run_sequential(model, stack, batches, prune_block, _progress(f"{method} blocks", progress))
    else:
        for i in _progress(f"{method} blocks", progress)(range(len(per_block))):
            prune_block(i, stack.blocks[i], [])


@torch.no_grad()
def dense_input_norms(model: nn.Module, batches: list[Any], per_block: list[list[Target]],
                      progress: bool = True) -> list[dict[str, torch.Tensor]]:
    """Per block, ``{module name: ||X_j||_2}`` of every target's input on the *dense* model (the
    statistics OWL's outlier ratios are computed from; the weights are not changed)."""
    stack = find_blocks(model)
    norms: list[dict[str, torch.Tensor]] = [{} for _ in per_block]

    def measure(i: int, block: nn.Module, inputs: list[BlockInput]) -> None:
        if per_block[i]:
            stats = _collect(block, inputs, per_block[i], hessian=False).stats
            norms[i] = {t.module_name: stats[t.module_name].col_norms.clone() for t in per_block[i]}

    run_sequential(model, stack, batches, measure, _progress("OWL input norms", progress))
    return norms


def block_outlier_ratios(per_block: list[list[Target]], norms: list[dict[str, torch.Tensor]],
                         m: float = 5.0) -> list[float]:
    """OWL's outlier ratio of every block: Wanda scores of all its targets together, from the
    input norms of :func:`dense_input_norms` (0 for a block without targets)."""
    return [outlier_ratio([wanda_scores(t.layout.to_rows(t.param), nb[t.module_name]) for t in ts], m) if ts else 0.0
            for ts, nb in zip(per_block, norms)]


def owl_ratios(model: nn.Module, batches: list[Any], per_block: list[list[Target]], m: float = 5.0,
               progress: bool = True) -> list[float]:
    """OWL's outlier ratio of every block, from the dense model's calibration activations."""
    return block_outlier_ratios(per_block, dense_input_norms(model, batches, per_block, progress), m)
