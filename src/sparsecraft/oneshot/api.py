"""``sparsecraft.prune``: the one door for one-shot pruning, with or without calibration data.

    import sparsecraft
    sparsecraft.prune(model, 0.9, distribution="erk", ignore=["classifier"])        # |w|, data-free
    sparsecraft.prune(llm, 0.5, criterion="wanda", calib=ids)                        # block by block
    sparsecraft.prune(llm, 0.0, method="sparsegpt", pattern="2:4", calib=ids)        # OBS update
    rep = sparsecraft.prune(llm, 0.7, criterion="wanda", distribution="owl", calib=ids)
    print(rep)                       # exact per-layer table; rep.info has method, times, OWL ratios

The words are the library's: ``criterion`` scores the weights (which go), ``pattern`` shapes the
mask, ``distribution`` splits ``sparsity`` (the fraction of zeros over the targeted weights)
over the layers, ``method`` names an algorithm that also updates the kept weights (SparseGPT),
``targets``/``ignore`` select layers, ``calib`` is calibration data.

Two engines, chosen from what is asked for:

* criterion scores that need nothing but the weights (or gradients over ``calib`` with
  ``loss_fn``) run :func:`sparsecraft.pruning.prune_by_criterion` on any ``nn.Module``;
* a criterion or distribution that needs *activations* (``wanda``, ``owl``) or a ``method``
  runs the sequential protocol of :mod:`sparsecraft.oneshot.blockwise` (Frantar & Alistarh
  2023; Sun et al. 2024): capture the first block's inputs, then for each block collect its
  layers' input statistics, prune them, recompute the block's output with the pruned weights
  and feed it to the next block.

For a model with a block stack (a transformer) the default targets are the Linear layers inside
the blocks (embeddings and the LM head are never pruned by default); otherwise every Linear /
Conv. The maths of each method lives in its own module (``sparsegpt``, ``owl``, ...).

Fused mixture-of-experts weights (3-D ``gate_up_proj`` / ``down_proj``) are targets too. The
calibrated engine treats each expert as its own layer: Wanda norms and SparseGPT Hessians come
from the tokens routed to that expert (:mod:`sparsecraft.oneshot.stats`), every expert's matrix is
pruned to the layer's sparsity and pattern (N:M along its input dimension); an expert that no
calibration token reached is pruned by magnitude instead (listed in ``info["experts_without_tokens"]``).
Data-free criteria rank a fused weight as one tensor, like any other weight.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsecraft.criteria import CRITERIA, Criterion, LossFn, wanda_scores
from sparsecraft.distributed import group
from sparsecraft.distributed.calibration import DataParallel
from sparsecraft.distributions import OWL, Distribution
from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import MASK_SUFFIX, MaskMeta, set_mask
from sparsecraft.oneshot.base import ONESHOT, OneShotPruner, make_pruner
from sparsecraft.oneshot.blockwise import BlockInput, batched, block_forward, block_targets, find_blocks, run_sequential
from sparsecraft.oneshot.owl import outlier_ratio, owl_sparsities
from sparsecraft.oneshot.prune_args import check_sparsity, parse_args
from sparsecraft.oneshot.stats import InputStats, StatsCollector
from sparsecraft.patterns import Pattern, PerRow, Unstructured
from sparsecraft.pruning import Override, current_scores, layer_choices, prune_by_criterion
from sparsecraft.report import SparsityReport, report
from sparsecraft.targets import Target


def _bar(desc: str, enabled: bool):
    def wrap(it):
        return tqdm(it, desc=desc, file=sys.stderr, disable=not enabled, leave=False)

    return wrap


def default_targets(model: nn.Module) -> list[str] | None:
    """The Linear layers inside the block stack of a transformer, else ``None`` (every layer)."""
    try:
        stack = find_blocks(model)
    except SparsecraftError:
        return None
    return [rf"^{re.escape(stack.prefix)}\.\d+\."] if stack.prefix else None


def prune(
    model: nn.Module | str | os.PathLike,
    sparsity: float = 0.5,
    *,
    method: str | None = None,
    criterion: Any = None,
    pattern: Any = "unstructured",
    distribution: Any = "uniform",
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    overrides: Iterable[Any] | None = None,
    calib: torch.Tensor | Sequence[Any] | None = None,
    loss_fn: LossFn | None = None,
    skip_unfit: bool = False,
    batch_size: int = 8,
    step: int = 0,
    progress: bool = True,
    distributed: bool | None = None,
    out: str | os.PathLike | None = None,
    offload: str | None = None,
    **options: Any,
) -> SparsityReport:
    """Prune ``model`` in place in one shot and return the exact :class:`SparsityReport`.

    Args:
        sparsity: fraction of zeros over the targeted weights (N:M patterns fix it themselves).
        method: ``None`` (mask by ``criterion``) or a one-shot method that also updates the kept
            weights: ``"sparsegpt"`` (options ``blocksize=128``, ``percdamp=0.01``); or one that removes
            structures (smaller shapes, docs/structure.md): ``"slicegpt"`` (``sparsity`` = fraction of the
            hidden size sliced), ``"channels"`` / ``"heads"`` (fraction of MLP or conv channels / query
            heads removed, scored by ``criterion``), ``"depth"`` (fraction of blocks, or ``blocks=n``).
        criterion: ``"magnitude"`` (default), ``"random"``, ``"saliency"``/``"movement"``/
            ``"gradient"`` (gradients over ``calib`` with ``loss_fn``), ``"wanda"`` (activations).
        pattern: ``"unstructured"``, ``"2:4"`` (any N:M), ``"row"``, ``"block:4x4"``, ``"channel"``.
        distribution: ``"uniform"``, ``"erk"``, ``"er"``, ``"global"``, ``"owl"`` (or
            ``{"type": "owl", "m": 5, "lam": 0.08}``), ``{"type": "explicit", "sparsities": {...}}``.
        targets / ignore: regexes (or exact names) of the layers to prune / to leave dense.
        overrides: ``[{"match": regex, "pattern": ..., "sparsity": ...}]`` per-layer exceptions.
        calib: calibration data: an ``(n, seq_len)`` token-id tensor or a list of batches (id
            tensors, dicts of model inputs, or ``(x, y)`` pairs for gradient criteria).
        skip_unfit: leave layers whose shape cannot take the pattern dense instead of raising.
        batch_size: calibration windows per forward (block-by-block engine).
        step: the training step recorded in the masks' metadata (training methods use it).
        progress: show a progress bar on stderr.
        distributed: data-parallel calibration under an initialised ``torch.distributed``
            group: each rank takes every W-th calibration batch and the statistics are summed
            over ranks per block, so every rank ends with the same masks as one process.
            ``None`` (default) = when a group with >1 rank is initialised; ``True`` = required.
        model / out / offload: ``model`` may be the path of a Hugging Face safetensors folder;
            the pruned model is then written to the folder ``out``. ``offload="disk"`` reads it
            one decoder block at a time (sequential onloading, for models larger than memory),
            ``"none"`` loads it whole, ``"auto"`` (default for a path) onloads when it would
            not fit (:mod:`sparsecraft.oneshot.onloaded`); ``rep.info["offload"]`` says which.
    """
    if isinstance(model, (str, os.PathLike)):
        from sparsecraft.oneshot.onloaded import prune_folder

        return prune_folder(model, sparsity, out=out, offload=offload, method=method, criterion=criterion,
                            pattern=pattern, distribution=distribution, targets=targets, ignore=ignore,
                            overrides=overrides, calib=calib, skip_unfit=skip_unfit, batch_size=batch_size,
                            step=step, progress=progress, distributed=distributed, **options)
    if out is not None or offload not in (None, "none"):
        raise SparsecraftError(
            "out= and offload= work on a model folder: pass the path of its safetensors folder as the model "
            f"(got an in-memory {type(model).__name__}; offload={offload!r})"
        )
    if not isinstance(model, nn.Module):
        raise SparsecraftError(f"prune() expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(method, str) and method.lower() not in CRITERIA and getattr(ONESHOT.get(method), "structural", False):
        from sparsecraft.oneshot.structural import prune_structural

        return prune_structural(model, check_sparsity(sparsity), make_pruner(method, **options), criterion=criterion,
                                pattern=pattern, distribution=distribution, targets=targets, ignore=ignore,
                                calib=calib, loss_fn=loss_fn, batch_size=batch_size, progress=progress,
                                overrides=overrides)
    a = parse_args(sparsity, method, criterion, pattern, distribution, targets, ignore, overrides, batch_size,
                   options)
    sparsity, pruner, crit, dist, pat, targets, ignore, ovs = (a.sparsity, a.pruner, a.crit, a.dist, a.pat,
                                                               a.targets, a.ignore, a.overrides)
    if pruner is None and not crit.needs_activations and not dist.needs_activations:
        if distributed:
            group.resolve(distributed)
        rep = prune_by_criterion(model, sparsity, pat, crit, dist, targets=targets or default_targets(model),
                                 ignore=ignore, overrides=ovs, skip_unfit=skip_unfit, calib=calib, loss_fn=loss_fn,
                                 step=step, progress=progress)
        rep.info.update(_info(None, crit, pat, dist, sparsity))
        return rep
    dp = DataParallel.setup(distributed, model, calib, batch_size) if calib is not None else None
    return _prune_blockwise(model, sparsity, pruner, crit, pat, dist, targets, ignore, ovs, calib, batch_size,
                            skip_unfit, step, progress, dp)


def _info(pruner: OneShotPruner | None, crit: Criterion, pat: Pattern, dist: Distribution, sparsity: float) -> dict:
    return {
        "method": pruner.registry_name if pruner is not None else None,  # type: ignore[attr-defined]
        "criterion": None if pruner is not None else crit.registry_name,  # type: ignore[attr-defined]
        "pattern": pat.spec(),
        "distribution": dist.registry_name,  # type: ignore[attr-defined]
        "sparsity": sparsity,
    }


def collect_stats(block: nn.Module, inputs: Sequence[BlockInput], targets: list[Target], hessian: bool,
                  dp: DataParallel | None = None) -> dict[str, InputStats]:
    """Run ``block`` on every captured batch with hooks on its targets; under data parallelism
    the statistics are summed over the ranks' batches (:meth:`DataParallel.reduce`)."""
    if dp is not None:
        return dp.reduce(block, inputs, targets, hessian)
    collector = StatsCollector({t.module_name: t.module for t in targets}, hessian=hessian)
    with collector:
        for inp in inputs:
            collector.new_pass()
            block_forward(block, inp)
    return collector.stats


def _layer_plan(per_block: list[list[Target]], pat: Pattern, dist: Distribution, ovs: list[Override],
                sparsity: float, skip_unfit: bool) -> dict[str, tuple[Pattern, float | None]]:
    """Every target's pattern and (override or distribution) sparsity; OWL's come later."""
    chosen = layer_choices([t for ts in per_block for t in ts], pat, ovs, skip_unfit)
    plan: dict[str, tuple[Pattern, float | None]] = {t.name: (p, s) for t, p, s in chosen}
    if not isinstance(dist, OWL):
        if dist.needs_scores:
            raise SparsecraftError(
                f"distribution {dist.registry_name!r} ranks every layer at once, which block-by-block "  # type: ignore[attr-defined]
                "pruning cannot do (later blocks see the pruned earlier ones); use uniform, erk, er, owl or explicit"
            )
        free = [t for ts in per_block for t in ts if t.name in plan and plan[t.name][1] is None]
        alloc = dist.allocate(free, sparsity, None) if free else {}
        plan = {n: (p, alloc[n] if s is None else s) for n, (p, s) in plan.items()}
    return plan


def _prune_blockwise(model: nn.Module, sparsity: float, pruner: OneShotPruner | None, crit: Criterion,
                     pat: Pattern, dist: Distribution, targets: list[str] | None, ignore: list[str],
                     ovs: list[Override], calib: Any, batch_size: int, skip_unfit: bool, step: int,
                     progress: bool, dp: DataParallel | None = None) -> SparsityReport:
    if pruner is not None:
        pat = pruner.check_pattern(pat)
    if isinstance(dist, OWL) and pat.fixed_sparsity:
        raise SparsecraftError(f"distribution 'owl' sets per-block sparsities; pattern {pat.spec()!r} fixes its own")
    stack = find_blocks(model)
    per_block = block_targets(model, stack, targets, ignore)
    plan = _layer_plan(per_block, pat, dist, ovs, sparsity, skip_unfit)
    what = pruner.registry_name if pruner is not None else crit.registry_name  # type: ignore[attr-defined]
    batches = batched(calib, batch_size) if calib is not None else []
    if not batches:
        raise SparsecraftError(
            f"{what}{' with distribution ' + repr(dist.registry_name) if dist.needs_activations else ''} "  # type: ignore[attr-defined]
            "needs calibration data: pass calib= (token ids or batches)"
        )
    if dp is not None:
        if any(t.layout.experts > 1 for ts in per_block for t in ts if t.name in plan):
            raise SparsecraftError("data-parallel calibration does not sum per-expert statistics of fused experts "
                                   "weights yet: prune this MoE model in one process (distributed=False)")
        batches = dp.local(batches)
    t0 = time.perf_counter()
    info = _info(pruner, crit, pat, dist, sparsity)
    if dp is not None:
        info["data_parallel"] = dp.describe()
    if isinstance(dist, OWL):
        ratios = owl_ratios(model, batches, per_block, dist.m, progress, dp)
        block_s = owl_sparsities(ratios, sparsity, dist.lam)
        plan = {t.name: (plan[t.name][0], block_s[i] if plan[t.name][1] is None else plan[t.name][1])
                for i, ts in enumerate(per_block) for t in ts if t.name in plan}
        info.update(owl_ratios=ratios, block_sparsities=block_s)
    needs_hessian = pruner is not None and pruner.needs_hessian

    no_tokens: dict[str, list[int]] = {}

    def prune_block(i: int, block: nn.Module, inputs: list[BlockInput]) -> None:
        ts = [t for t in per_block[i] if t.name in plan]
        if not ts:
            return
        stats = collect_stats(block, inputs, ts, needs_hessian, dp)
        for t in ts:
            p, s = plan[t.name]
            if t.layout.experts > 1 and (pruner is not None or crit.needs_activations):
                missing = _prune_experts(t, stats.get(t.name), p, float(s), pruner, crit, what, step)
                if missing:
                    no_tokens[t.name] = missing
                continue
            prune_target(t, stats.get(t.module_name), p, float(s), pruner, crit, what, step)

    run_sequential(model, stack, batches, prune_block, _bar(f"{what} blocks", progress))
    info["wall_time_s"] = round(time.perf_counter() - t0, 3)
    if no_tokens:
        info["experts_without_tokens"] = no_tokens
    names = list(plan)
    rep = report(model, targets=[f"^{re.escape(n)}$" for n in names])
    rep.info.update(info)
    return rep


@torch.no_grad()
def prune_target(t: Target, stats: Any, pattern: Pattern, sparsity: float, pruner: OneShotPruner | None,
                  crit: Criterion, label: str, step: int) -> None:
    layout = t.layout
    if pruner is not None:
        w = layout.to_rows(t.param.detach()).to(torch.float32)
        new_w, keep = pruner.prune(w, stats, pattern, sparsity)
        if new_w is not None:
            t.param.data.copy_(layout.from_rows(new_w).to(t.param.dtype))
    else:
        if crit.needs_activations:
            crit.set_input_norms(t, stats.col_norms)  # type: ignore[attr-defined]
        scores = layout.to_rows(current_scores(crit, t))
        group = PerRow() if crit.group == "row" and type(pattern) is Unstructured else pattern
        keep = group.mask(scores, sparsity)
    achieved = 1.0 - float(keep.sum()) / keep.numel() if keep.numel() else 0.0
    set_mask(t.module, layout.from_rows(keep), t.param_name, MaskMeta(pattern.spec(), achieved, label, step))


@torch.no_grad()
def _prune_experts(t: Target, per_expert: list[Any] | None, pattern: Pattern, sparsity: float,
                   pruner: OneShotPruner | None, crit: Criterion, label: str, step: int) -> list[int]:
    """Prune a fused experts weight expert by expert from each expert's own calibration statistics
    (SparseGPT's update or Wanda's |W| * ||X_e||); experts without tokens fall back to magnitude.
    Returns the experts that had no calibration tokens."""
    layout = t.layout
    w = layout.to_rows(t.param.detach()).to(torch.float32)
    old = getattr(t.module, t.param_name + MASK_SUFFIX, None)
    old_rows = layout.to_rows(old) if old is not None else None
    per_rows = layout.rows // layout.experts
    keep = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    new_w = w.clone()
    missing = []
    for e in range(layout.experts):
        rows = slice(e * per_rows, (e + 1) * per_rows)
        st = per_expert[e] if per_expert is not None else None
        if st is None or st.n == 0 or pruner is None:
            if st is None or st.n == 0:
                missing.append(e)
                scores = w[rows].abs()
            else:
                scores = wanda_scores(w[rows], st.col_norms)
            if old_rows is not None:
                scores = scores.masked_fill(~old_rows[rows], float("-inf"))
            group = PerRow() if crit.group == "row" and type(pattern) is Unstructured else pattern
            keep[rows] = group.mask(scores, sparsity)
            new_w[rows] = w[rows] * keep[rows]
        else:
            upd, k = pruner.prune(w[rows], st, pattern, sparsity)
            keep[rows] = k
            if upd is not None:
                new_w[rows] = upd
    t.param.data.copy_(layout.from_rows(new_w).to(t.param.dtype))
    achieved = 1.0 - float(keep.sum()) / keep.numel() if keep.numel() else 0.0
    set_mask(t.module, layout.from_rows(keep), t.param_name, MaskMeta(pattern.spec(), achieved, label, step))
    return missing


def _input_norms(t: Target, stats: dict[str, Any]) -> Any:
    """A target's input column norms: one tensor, or for fused experts one per expert (None for an
    expert that saw no calibration token)."""
    if t.layout.experts > 1:
        return [st.col_norms.clone() if st is not None else None for st in stats[t.name]]
    return stats[t.module_name].col_norms.clone()


def _wanda_rows(t: Target, norms: Any) -> torch.Tensor:
    """Wanda scores of a target's row view (per expert from each expert's norms for fused experts)."""
    w = t.layout.to_rows(t.param.detach())
    if t.layout.experts == 1:
        return wanda_scores(w, norms)
    per = w.shape[0] // t.layout.experts
    parts = [wanda_scores(w[e * per:(e + 1) * per], n if n is not None else torch.zeros(w.shape[1]))
             for e, n in enumerate(norms)]
    return torch.cat(parts)



def dense_input_norms(model: nn.Module, batches: list[Any], per_block: list[list[Target]],
                      progress: bool = True, dp: DataParallel | None = None) -> list[dict[str, torch.Tensor]]:
    """Per block, ``{target name: ||X_j||_2}`` of every target's input on the *dense* model (the
    statistics OWL's outlier ratios are computed from; the weights are not changed)."""
    stack = find_blocks(model)
    norms: list[dict[str, torch.Tensor]] = [{} for _ in per_block]

    def measure(i: int, block: nn.Module, inputs: list[BlockInput]) -> None:
        if per_block[i]:
            stats = collect_stats(block, inputs, per_block[i], False, dp)
            norms[i] = {t.name: _input_norms(t, stats) for t in per_block[i]}

    run_sequential(model, stack, batches, measure, _bar("OWL input norms", progress))
    return norms


def block_outlier_ratios(per_block: list[list[Target]], norms: list[dict[str, torch.Tensor]],
                         m: float = 5.0) -> list[float]:
    """OWL's outlier ratio of every block: the Wanda scores of all its targets together, from the
    input norms of :func:`dense_input_norms` (0 for a block without targets). One dense pass
    serves every M (an OWL sweep shares it)."""
    return [outlier_ratio([_wanda_rows(t, nb[t.name]) for t in ts], m) if ts else 0.0
            for ts, nb in zip(per_block, norms)]


def owl_ratios(model: nn.Module, batches: list[Any], per_block: list[list[Target]], m: float = 5.0,
               progress: bool = True, dp: DataParallel | None = None) -> list[float]:
    """OWL's outlier ratio of every block, from the dense model's calibration activations."""
    return block_outlier_ratios(per_block, dense_input_norms(model, batches, per_block, progress, dp), m)
