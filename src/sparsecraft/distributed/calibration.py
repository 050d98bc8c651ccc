"""Data-parallel calibration for one-shot pruning (Wanda, SparseGPT, OWL) under torch.distributed.

Each rank takes every W-th calibration batch (round robin over the batches one process would
form) and runs the block-by-block protocol on its batches only. Per block, the layer input
statistics of :mod:`sparsecraft.oneshot.stats` are sums over calibration tokens, so the ranks'
partial sums add up to the single-process statistics:

* Wanda's ``sq`` (sum of x_j^2, the squared column norm) is exchanged *per batch* and added in
  the global batch order (:func:`sparsecraft.distributed.group.ordered_sum`): the same float
  additions in the same order as one process, so the norms, and therefore Wanda's masks, are
  bit-identical to a single-process run for any number of ranks;
* SparseGPT's Hessian sum X X^T and the counts (tokens ``n``, and calibration sequences where
  the statistics keep them) are all-reduced, i.e. summed over ranks, so the Hessian's scale
  (2 / count) follows from the global counts. A different summation order changes the last bits,
  so SparseGPT's weights agree with one process to float tolerance; every rank still gets
  the *same* reduced Hessian, hence identical masks and weights on every rank.

Before anything runs, the ranks check that they hold the same model (names, shapes, dtypes and
a sample of every weight) and the same calibration data shape, and that there are at least as
many batches as ranks; a disagreement is a one-line error on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sparsecraft.distributed import group
from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.blockwise import BlockInput, batched, block_forward
from sparsecraft.oneshot.stats import InputStats, StatsCollector
from sparsecraft.targets import Target


def calib_signature(calib: Any) -> list[Any]:
    """What the ranks must agree on about the calibration data: its count and shape."""
    if isinstance(calib, torch.Tensor):
        t = calib if calib.dim() > 1 else calib[None]
        return ["tensor", list(t.shape), round(float(t.reshape(-1)[:4096].double().sum()), 3)]
    items = list(calib)
    return ["batches", len(items)]


def _counters(stats: InputStats) -> list[str]:
    """The integer counts of a statistics object (tokens ``n``; sequences ``samples`` where the
    stats keep them, for the reference's Hessian scale): all summed over ranks."""
    return [c for c in ("n", "samples") if isinstance(getattr(stats, c, None), int)]


class DataParallel:
    """Which calibration batches this rank owns, and the per-block reduction of statistics."""

    def __init__(self, n_batches: int) -> None:
        self.rank, self.world = group.rank(), group.world_size()
        self.n = n_batches
        self.indices = group.shard(n_batches, self.rank, self.world)

    @classmethod
    def setup(cls, distributed: bool | None, model: nn.Module | None, calib: Any, batch_size: int,
              fingerprint: list[Any] | None = None) -> DataParallel | None:
        """``None`` without a process group (or with ``distributed=False``); else check that the
        ranks agree on the model and the calibration data, on every rank."""
        if not group.resolve(distributed, "data-parallel calibration"):
            return None
        if fingerprint is None and model is not None:
            fingerprint = group.fingerprint(list(model.named_parameters()))
        group.agree(fingerprint, "the model (parameter names, shapes, dtypes or weights differ)")
        group.agree(calib_signature(calib), "the calibration data (count / shape / content of the windows)")
        n = len(batched(calib, batch_size))
        if n < group.world_size():
            raise SparsecraftError(
                f"data-parallel calibration needs at least one calibration batch per rank: {n} batch(es) of "
                f"{batch_size} for {group.world_size()} ranks; give more windows or a smaller batch_size"
            )
        return cls(n)

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world, "rank": self.rank, "batches": self.n, "local_batches": len(self.indices)}

    def local(self, batches: Sequence[Any]) -> list[Any]:
        """This rank's batches (every W-th, starting at its rank)."""
        return [batches[i] for i in self.indices]

    @torch.no_grad()
    def reduce(self, block: nn.Module, inputs: Sequence[BlockInput], targets: list[Target],
               hessian: bool) -> dict[str, InputStats]:
        """Statistics of ``block``'s targets over *all* ranks' batches (see the module docstring)."""
        modules = {t.module_name: t.module for t in targets}
        sq_parts: dict[str, dict[int, torch.Tensor]] = {}
        acc: dict[str, InputStats] = {}  # local running sums (H, n), one per shared input
        groups: list[list[str]] | None = None
        for j, inp in zip(self.indices, inputs):
            collector = StatsCollector(modules, hessian=hessian)
            with collector:
                collector.new_pass()
                block_forward(block, inp)
            if groups is None:
                groups = collector.groups()
            for names in groups:
                st = collector.stats[names[0]]
                sq_parts.setdefault(names[0], {})[j] = st.sq
                a = acc.get(names[0])
                if a is None:
                    acc[names[0]] = st
                else:
                    for c in _counters(a):
                        setattr(a, c, getattr(a, c) + getattr(st, c))
                    if a.H is not None:
                        a.H += st.H
        out: dict[str, InputStats] = {}
        for names in groups or []:
            key = names[0]
            a = acc[key]
            merged = InputStats(a.cols, hessian, a.sq.device)
            merged.sq = group.ordered_sum(sq_parts[key], self.n, a.sq)
            counts = torch.tensor([getattr(a, c) for c in _counters(a)], dtype=torch.float64, device=a.sq.device)
            group.all_reduce_sum_(counts)
            for c, v in zip(_counters(a), counts.tolist()):
                setattr(merged, c, int(v))
            if hessian:
                merged.H = group.all_reduce_sum_(a.H)
            for name in names:
                out[name] = merged
        return out
