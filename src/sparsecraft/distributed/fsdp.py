"""Sparse masks on FSDP2 (``torch.distributed.fsdp.fully_shard``) parameter shards.

Under FSDP2 every parameter is a ``DTensor`` sharded along dim 0 (``Shard(0)``): each rank holds
a slice of rows. sparsecraft's training methods follow the parameters:

* **masks live with the shards**: a weight's keep-mask is a bool ``DTensor`` with the
  weight's mesh and placements (:func:`shard_like`), so each rank stores and applies only its
  rows; gradients, weights and the (sharded, ``DTensor``) optimizer state are masked
  element-wise on the local shards (:func:`local`), with no communication;
* **whole-layer decisions on the gathered layer**: a decision that ranks a whole layer (the
  top-k of GMP's magnitudes, RigL/SET's drop and grow) gathers that layer's weight, mask and
  scores (:func:`full`, an all-gather), decides on the full tensors -- every rank the same
  decision, as every rank holds the same gathered values and the same seeded generator --
  and keeps its own rows of the result. :func:`gathered` gives a criterion a target whose
  weight and mask are the full tensors, one layer at a time (:func:`plan_gathered`);
* exact sparsity on every rank after every step follows: the pruned entries of each shard are
  zero and stay zero (masked gradient, masked optimizer state).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from sparsecraft.masks import MASK_SUFFIX
from sparsecraft.targets import Target


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    return DTensor


def is_dtensor(x: Any) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(x, cls)


def local(x: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a ``DTensor`` (the tensor itself otherwise)."""
    return x.to_local() if is_dtensor(x) else x


def full(x: torch.Tensor) -> torch.Tensor:
    """The whole tensor (an all-gather for a ``DTensor``; a collective: every rank calls it)."""
    return x.full_tensor() if is_dtensor(x) else x


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a full tensor, the same on every rank) as a ``DTensor`` laid out like
    ``like``; each rank keeps its own slice, no communication. Plain tensors pass through."""
    if not is_dtensor(like) or is_dtensor(value):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(local(like).device), like.device_mesh, like.placements, src_data_rank=None)


def from_local_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``DTensor`` from this rank's shard ``value``, with ``like``'s mesh, placements and shape."""
    if not is_dtensor(like):
        return value
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(value.to(local(like).device), like.device_mesh, like.placements,
                              shape=like.shape, stride=like.stride(), run_check=False)


def any_sharded(targets: Sequence[Target]) -> bool:
    return any(is_dtensor(t.param) for t in targets)


@contextmanager
def gathered(target: Target) -> Iterator[Target]:
    """A stand-in for ``target`` whose weight and mask are the full (gathered) tensors, for
    criteria and patterns that score a whole layer. The real module is not touched."""
    if not is_dtensor(target.param):
        yield target
        return
    module = target.module
    proxy = object.__new__(type(module))  # shallow: same class (layout), own attribute dicts; never run
    attrs = dict(module.__dict__)
    attrs["_parameters"], attrs["_buffers"] = dict(module._parameters), dict(module._buffers)
    object.__setattr__(proxy, "__dict__", attrs)
    proxy._parameters[target.param_name] = torch.nn.Parameter(full(target.param.detach()), requires_grad=False)
    buf = target.param_name + MASK_SUFFIX
    if module._buffers.get(buf) is not None:
        proxy._buffers[buf] = full(module._buffers[buf])
    yield Target(target.module_name, proxy, target.param_name)


def plan_gathered(targets: Sequence[Target], sparsity: float, pattern: Any, criterion: Any,
                  distribution: Any) -> dict[str, torch.Tensor]:
    """Full keep-masks of FSDP-sharded targets: layer budgets from the shapes (or, for a
    distribution that ranks all layers, from every gathered layer's scores), then one layer
    at a time: gather, score, mask (the same on every rank)."""
    from sparsecraft.pruning import current_scores, decide_masks, layer_choices

    if distribution.needs_scores:  # one ranking over every layer: gather them all
        stack = [gathered(t) for t in targets]
        full_targets = [cm.__enter__() for cm in stack]
        try:
            planned = decide_masks(full_targets, sparsity, pattern, criterion, distribution)
        finally:
            for cm in stack:
                cm.__exit__(None, None, None)
        return {name: keep for name, (_, _, _, keep) in planned.items()}
    chosen = layer_choices(targets, pattern)
    free = [t for t, _, s in chosen if s is None]
    alloc = distribution.allocate(free, sparsity, None) if free else {}
    out = {}
    for t, p, s in chosen:
        with gathered(t) as g:
            scores = current_scores(criterion, g)
            layout = g.layout
            out[t.name] = layout.from_rows(p.mask(layout.to_rows(scores), alloc[t.name] if s is None else float(s)))
    return out
