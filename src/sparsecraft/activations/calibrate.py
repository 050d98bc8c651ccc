"""CETT tables of every MLP layer from the dense model's activations on calibration data.

For a transformer the stack is walked block by block (:mod:`sparsecraft.oneshot.blockwise`):
block ``l``'s inputs are the dense outputs of block ``l - 1``, its MLP hidden activations on all
calibration tokens are collected at the down projection, the layer's exact CETT curve is built
(:func:`sparsecraft.activations.cett.cett_curve`) and reduced to its table, and only then does
the next block run -- one layer's activations (tokens x hidden) are held at a time. A plain
``nn.Sequential`` runs once with every site hooked. The model must be dense in its activations
(no activation transform installed): the thresholds come from the dense model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparsecraft.activations.cett import DEFAULT_BITS, CettCurve, CettTable, cett_curve
from sparsecraft.activations.meter import model_inputs
from sparsecraft.activations.sites import MLPSite, find_sites
from sparsecraft.errors import SparsecraftError

CurveFn = Callable[[int, CettCurve], None]


class _Collect:
    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []

    def __call__(self, module: nn.Module, args: tuple) -> None:
        a = args[0].detach()
        self.parts.append(a.reshape(-1, a.shape[-1]).float().cpu())

    def take(self) -> torch.Tensor:
        out = torch.cat(self.parts)
        self.parts = []
        return out


def _batches(calib: Any, batch_size: int) -> list[Any]:
    if isinstance(calib, torch.Tensor):
        if calib.dim() != 2 or len(calib) == 0:
            raise SparsecraftError(f"calibration windows must be a non-empty (n, L) tensor, got {tuple(calib.shape)}")
        return [calib[i : i + batch_size] for i in range(0, len(calib), batch_size)]
    batches = list(calib)
    if not batches:
        raise SparsecraftError("no calibration batches")
    return batches


def _check_dense(sites: list[MLPSite]) -> None:
    wrapped = [s.name for s in sites if s.wrapper is not None]
    if wrapped:
        raise SparsecraftError(
            f"CETT thresholds come from the dense model, but {wrapped[0]} already has an activation "
            "transform; call sparsecraft.activations.restore(model) first"
        )


@torch.no_grad()
def cett_tables(
    model: nn.Module,
    calib: Any,
    batch_size: int = 8,
    bits: int = DEFAULT_BITS,
    progress: bool = False,
    native: bool | None = None,
    on_curve: CurveFn | None = None,
) -> list[CettTable]:
    """One :class:`CettTable` per MLP site of ``model``, from ``calib`` ((n, L) token ids or a
    list of batches). ``on_curve(i, curve)`` sees each full curve before it is reduced."""
    sites = find_sites(model)
    _check_dense(sites)
    batches = _batches(calib, batch_size)
    was_training = model.training
    model.eval()
    tables: list[CettTable] = []

    def finish(i: int, a: torch.Tensor) -> None:
        curve = cett_curve(a, sites[i].down_weight(), native=native)
        if on_curve is not None:
            on_curve(i, curve)
        tables.append(curve.table(bits))

    try:
        if sites[0].family == "sequential":
            hooks = [_Collect() for _ in sites]
            handles = [s.projection.register_forward_pre_hook(h) for s, h in zip(sites, hooks)]
            try:
                device = next(model.parameters()).device
                for b in batches:
                    model(**model_inputs(model, b, device))
            finally:
                for h in handles:
                    h.remove()
            for i, h in enumerate(hooks):
                finish(i, h.take())
        else:
            _blockwise(model, sites, batches, finish, progress)
    finally:
        model.train(was_training)
    return tables


def _blockwise(model: nn.Module, sites: list[MLPSite], batches: list[Any],
               finish: Callable[[int, torch.Tensor], None], progress: bool) -> None:
    from sparsecraft.oneshot.blockwise import block_forward, capture_inputs, find_blocks

    stack = find_blocks(model)
    by_block = {s.index: i for i, s in enumerate(sites)}
    inputs = capture_inputs(model, stack, batches)
    indices: Iterable[int] = range(len(stack.blocks))
    if progress:
        indices = tqdm(indices, desc="CETT curves", file=sys.stderr, leave=False)
    for b in indices:
        block = stack.blocks[b]
        site_i = by_block.get(b)
        hook = _Collect()
        handle = sites[site_i].projection.register_forward_pre_hook(hook) if site_i is not None else None
        try:
            for inp in inputs:
                inp.hidden = block_forward(block, inp)
        finally:
            if handle is not None:
                handle.remove()
        if site_i is not None:
            finish(site_i, hook.take())
