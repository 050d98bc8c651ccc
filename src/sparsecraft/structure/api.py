"""``prune_structure``: score structures, choose what goes, remove it, rewrite the config.

    from sparsecraft import structure
    rep = structure.prune_structure(llm, 0.25, kind="channels", criterion="wanda", calib=ids)
    rep = structure.prune_structure(llm, 0.25, kind="heads")                 # query heads, evenly per KV group
    rep = structure.prune_structure(llm, 0.0, kind="blocks", blocks=4, calib=ids)   # depth, Block Influence
    print(rep)                       # parameters before / after, removed units, new shapes
    structure.save_pretrained(llm, "small/", tokenizer)

``ratio`` is the fraction of the selected units removed: channels of every selected channel group,
query heads, or blocks. ``distribution="uniform"`` removes that fraction from every group (round
to nearest unit); ``"global"`` ranks all units of all groups together by raw score and removes
the lowest ones (never the last unit of a group). Heads: ``head_mode="query"`` removes query heads
evenly from every key/value group (a layer's unit is "one query head from each group", scored by
the sum of the removed heads' scores); ``"kv"`` removes whole key/value groups with all their
query heads. With one query head per key/value head the two are the same.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from sparsecraft.criteria import LossFn
from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.blockwise import batched, find_blocks
from sparsecraft.structure import hf
from sparsecraft.structure.depth import block_influence, remove_blocks
from sparsecraft.structure.graph import DependencyGraph, HeadGroup, trace
from sparsecraft.structure.importance import finish, head_energies, space_energies
from sparsecraft.structure.remove import Change, remove_channels, remove_heads
from sparsecraft.targets import check_regexes, name_matches

KINDS = ("channels", "heads", "blocks")


def count_params(model: nn.Module) -> int:
    """Parameters of ``model``, tied ones counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@dataclass
class StructureReport:
    """What :func:`prune_structure` removed; ``to_dict()`` is JSON-serialisable."""

    kind: str
    ratio: float
    criterion: str | None
    distribution: str
    params_before: int
    params_after: int
    removed: dict[str, int] = field(default_factory=dict)  #: group -> channels / query heads removed
    blocks_removed: list[int] = field(default_factory=list)
    block_scores: list[float] = field(default_factory=list)
    shapes: dict[str, list[list[int]]] = field(default_factory=dict)  #: param -> [before, after]
    native_config: bool | None = None  #: plain ``from_pretrained`` can build it (None: not a HF model)
    wall_time_s: float = 0.0

    @property
    def param_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "param_reduction": self.param_reduction}

    def __str__(self) -> str:
        lines = [f"{self.kind} removal, ratio {self.ratio:g} ({self.distribution}, criterion {self.criterion}): "
                 f"{self.params_before:,} -> {self.params_after:,} parameters ({self.param_reduction:.1%} fewer)"]
        if self.blocks_removed:
            lines.append(f"  blocks removed: {self.blocks_removed}")
        lines += [f"  {k:<44} -{v}" for k, v in self.removed.items()]
        if self.native_config is not None:
            lines.append("  config: " + ("plain from_pretrained loads it" if self.native_config else
                                          "per-layer shapes recorded; load with sparsecraft.structure.load_pretrained"))
        return "\n".join(lines)


def _count(ratio: float, n: int, name: str, what: str) -> int:
    k = int(round(ratio * n))
    if k >= n:
        raise SparsecraftError(f"ratio {ratio:g} would remove all {n} {what} of {name}; use a smaller ratio")
    return k


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep mask without the ``k`` lowest scores (ties: lower index goes first)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k:
        keep[torch.argsort(scores, stable=True)[:k]] = False
    return keep


def _select(items: list, names: Any, targets: list[str], ignore: list[str]) -> list:
    return [x for x in items
            if (not targets or name_matches(targets, *names(x))) and not name_matches(ignore, *names(x))]


def plan_channels(graph: DependencyGraph, groups: list, scores: dict[int, torch.Tensor], ratio: float,
                  distribution: str) -> dict[str, torch.Tensor]:
    if distribution == "uniform":
        return {g.name: _lowest(scores[g.space], _count(ratio, g.size, g.name, "channels")) for g in groups}
    total = sum(g.size for g in groups)
    k = _count(ratio, total, "the selected groups", "channels")
    flat = torch.cat([scores[g.space] for g in groups])
    owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)])
    keep = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}
    left = {g.name: g.size for g in groups}
    starts = torch.cumsum(torch.tensor([0] + [g.size for g in groups]), 0)
    for j in torch.argsort(flat, stable=True).tolist():
        if k == 0:
            break
        g = groups[int(owner[j])]
        if left[g.name] > 1:
            keep[g.name][j - int(starts[int(owner[j])])] = False
            left[g.name] -= 1
            k -= 1
    return keep


def _head_units(g: HeadGroup, q: torch.Tensor, kv: torch.Tensor, mode: str) -> list[tuple[float, list[int]]]:
    """(score, query heads removed) of every removal unit of one attention module, in the order
    they must be taken."""
    per = q.reshape(g.hkv, g.group)
    if mode == "kv" or g.group == 1:
        units = [(float(per[j].sum() + kv[j]), list(range(j * g.group, (j + 1) * g.group))) for j in range(g.hkv)]
        return sorted(units, key=lambda u: u[0])
    order = torch.argsort(per, dim=1, stable=True)
    return [(float(per.gather(1, order[:, r:r + 1]).sum()), [j * g.group + int(order[j, r]) for j in range(g.hkv)])
            for r in range(g.group)]


def plan_heads(heads: list[HeadGroup], units: dict[str, list[tuple[float, list[int]]]], ratio: float,
               distribution: str) -> dict[str, torch.Tensor]:
    keep = {g.name: torch.ones(g.hq, dtype=torch.bool) for g in heads}
    if distribution == "uniform":
        for g in heads:
            for _, hs in units[g.name][:_count(ratio, len(units[g.name]), g.name, "head units")]:
                keep[g.name][hs] = False
        return keep
    target = _count(ratio, sum(g.hq for g in heads), "the selected attention modules", "query heads")
    pool = sorted(((s, r, g.name, hs) for g in heads for r, (s, hs) in enumerate(units[g.name])), key=lambda u: u[:2])
    taken = {g.name: 0 for g in heads}
    removed = 0
    for _, r, name, hs in pool:
        if removed + len(hs) / 2 > target:
            continue
        if r == taken[name] and r < len(units[name]) - 1:
            keep[name][hs] = False
            taken[name] += 1
            removed += len(hs)
    return keep


def prune_structure(
    model: nn.Module,
    ratio: float,
    *,
    kind: str = "channels",
    criterion: Any = "magnitude",
    distribution: str = "uniform",
    targets: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    calib: Any = None,
    loss_fn: LossFn | None = None,
    batch_size: int = 8,
    head_mode: str = "query",
    blocks: int | None = None,
    example: Any = None,
) -> StructureReport:
    """Remove the ``ratio`` fraction of ``kind`` units with the lowest importance (see module doc)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise SparsecraftError(f"ratio must be a number in [0, 1), got {ratio!r}")
    if kind not in KINDS:
        raise SparsecraftError(f"unknown structure kind {kind!r}; allowed: {', '.join(KINDS)}")
    if distribution not in ("uniform", "global"):
        raise SparsecraftError(f"structured removal takes distribution 'uniform' or 'global', got {distribution!r}")
    if head_mode not in ("query", "kv"):
        raise SparsecraftError(f"head_mode must be 'query' or 'kv', got {head_mode!r}")
    if blocks is not None and (isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0):
        raise SparsecraftError(f"blocks must be a whole number >= 0, got {blocks!r}")
    tg, ig = check_regexes(targets, "targets"), check_regexes(ignore, "ignore")
    batches = batched(calib, batch_size) if calib is not None else None
    t0 = time.perf_counter()
    before = count_params(model)
    crit_name = None if kind == "blocks" else str(criterion)
    rep = StructureReport(kind, float(ratio), crit_name, distribution, before, before)
    if kind == "blocks":
        change = _prune_blocks(model, ratio, blocks, batches, rep)
    else:
        graph = trace(model, example)
        if kind == "channels":
            groups = _select(graph.channels, lambda g: (g.name, *g.layers), tg, ig)
            if not groups:
                raise SparsecraftError(f"no removable channel group matches targets={tg or 'all'} ignore={ig}"
                                       + _frozen_note(graph))
            energies, l1 = space_energies(model, graph, [g.space for g in groups], criterion, batches, loss_fn)
            keep = plan_channels(graph, groups, {s: finish(e, l1) for s, e in energies.items()}, ratio, distribution)
            change = remove_channels(model, graph, keep)
        else:
            heads = _select(graph.heads, lambda g: (g.name,), tg, ig)
            if not heads:
                raise SparsecraftError(f"no removable attention module matches targets={tg or 'all'} ignore={ig}"
                                       + _frozen_note(graph))
            spaces = sorted({s for g in heads for s in (g.q[0], g.k[0], g.v[0], g.o)})
            energies, l1 = space_energies(model, graph, spaces, criterion, batches, loss_fn)
            units = {}
            for g in heads:
                q, kv = head_energies(g, energies)
                units[g.name] = [(float(finish(torch.tensor(s), l1)), hs) for s, hs in _head_units(g, q, kv, head_mode)]
            change = remove_heads(model, graph, plan_heads(heads, units, ratio, distribution))
    rep.removed = dict(change.removed)
    rep.shapes = {k: [a, b] for k, (a, b) in change.shapes.items()}
    rep.params_after = count_params(model)
    if hf.is_hf_model(model):
        summary = {"kind": kind, "ratio": float(ratio), "removed": rep.removed, "blocks_removed": rep.blocks_removed}
        rep.native_config = hf.sync_config(model, summary, change.attrs)["native"]
    rep.wall_time_s = round(time.perf_counter() - t0, 3)
    return rep


def _prune_blocks(model: nn.Module, ratio: float, blocks: int | None, batches: Any, rep: StructureReport) -> Change:
    stack = find_blocks(model)
    n = len(stack.blocks)
    k = blocks if blocks is not None else int(round(ratio * n))
    if k >= n:
        raise SparsecraftError(f"removing {k} of the {n} blocks of {stack.prefix} would leave none; remove fewer")
    change = Change("blocks")
    if k == 0:
        return change
    if not batches:
        raise SparsecraftError("depth pruning scores blocks on calibration data (Block Influence): pass calib=")
    scores = block_influence(model, batches, stack)
    drop = sorted(torch.argsort(torch.tensor(scores), stable=True)[:k].tolist())
    remove_blocks(model, drop, stack)
    rep.blocks_removed, rep.block_scores = drop, [round(s, 6) for s in scores]
    change.removed = {stack.block_name(i): 1 for i in drop}
    return change


def _frozen_note(graph: DependencyGraph) -> str:
    if not graph.frozen:
        return ""
    name, why = next(iter(graph.frozen.items()))
    return f" (e.g. {name}: {why})"


def named(pattern: str) -> str:
    """An exact-name target regex."""
    return f"^{re.escape(pattern)}$"
