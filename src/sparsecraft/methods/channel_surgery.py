"""Physically remove pruned channels of a plain feed-forward chain (after channel pruning).

``mask-sparsity`` and ``group-lasso`` (``groups="channel"``) prune channels by masking them.
:func:`remove_pruned_channels` then makes the model smaller: for every producer layer
(``Conv1d/2d/3d`` or ``Linear``) it drops the output channels that are *provably dead*,
i.e. whose activation is exactly 0:

* if a BatchNorm with as many channels follows before the next layer: its ``gamma`` and
  ``beta`` at that channel are 0 (what ``mask-sparsity`` leaves);
* otherwise: the weight's mask row is all ``False`` and the producer's bias at that channel
  is 0 (or there is no bias).
 It slices the producer (weight, bias, masks), the
BatchNorm (weight, bias, running statistics, masks) and the *consumer* -- the next
``Conv``/``Linear`` in module order: a conv loses those input channels, a linear after a
``Flatten`` loses the ``spatial`` columns of each removed channel (channel-major flatten,
``spatial = in_features / channels``).

Scope (documented limits): module *order* must be data-flow order (a ``nn.Sequential``-like
chain; no residual connections, no concatenation, no grouped convs), and the activations
between producer and consumer must map 0 to 0 (ReLU, GELU, tanh, max/avg pooling, dropout):
then the model's outputs are unchanged. Layers outside these rules are left alone.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsecraft.masks import MASK_SUFFIX

PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _slice_param(module: nn.Module, name: str, idx: torch.Tensor, dim: int) -> None:
    """Keep ``idx`` along ``dim`` of ``module.<name>`` (parameter or buffer) and its mask."""
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, idx).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        setattr(module, name, new)
    mask = getattr(module, name + MASK_SUFFIX, None)
    if isinstance(mask, torch.Tensor):
        setattr(module, name + MASK_SUFFIX, mask.index_select(dim, idx).clone())


def _dead_channels(prod: nn.Module, bn: nn.Module | None) -> torch.Tensor:
    """Bool (out,): channels whose activation is exactly 0 by the rules of the docstring."""
    out = prod.weight.shape[0]
    if bn is not None:  # gamma = beta = 0 zeroes the channel whatever the producer computes
        if not bn.affine:
            return torch.zeros(out, dtype=torch.bool)
        return ((bn.weight.detach() == 0) & (bn.bias.detach() == 0)).cpu()
    mask = getattr(prod, "weight" + MASK_SUFFIX, None)
    if not isinstance(mask, torch.Tensor):
        return torch.zeros(out, dtype=torch.bool)
    dead = ~mask.reshape(out, -1).any(dim=1)
    if prod.bias is not None:
        dead &= prod.bias.detach() == 0
    return dead.cpu()


def _fix_sizes(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, PRODUCERS):
        module.out_channels, module.in_channels = module.weight.shape[:2]
    elif isinstance(module, BNS):
        module.num_features = module.weight.shape[0]


@torch.no_grad()
def remove_pruned_channels(model: nn.Module) -> dict[str, int]:
    """Drop dead output channels of every producer of a chain; returns removed counts by
    producer name (only producers that lost channels)."""
    leaves = [(n, m) for n, m in model.named_modules() if isinstance(m, (*PRODUCERS, *BNS))]
    removed: dict[str, int] = {}
    for i, (name, prod) in enumerate(leaves):
        if not isinstance(prod, PRODUCERS) or getattr(prod, "groups", 1) != 1:
            continue
        rest = leaves[i + 1 :]
        bn = rest[0][1] if rest and isinstance(rest[0][1], BNS) else None
        if bn is not None and bn.num_features != prod.weight.shape[0]:
            continue
        consumer = next((m for _, m in rest if isinstance(m, PRODUCERS)), None)
        if consumer is None or getattr(consumer, "groups", 1) != 1:
            continue
        out = prod.weight.shape[0]
        cin = consumer.weight.shape[1]
        if isinstance(consumer, nn.Linear) and not isinstance(prod, nn.Linear) and cin % out == 0:
            spatial = cin // out
        elif cin == out:
            spatial = 1
        else:
            continue
        dead = _dead_channels(prod, bn)
        if not dead.any() or dead.all():
            continue
        keep = torch.nonzero(~dead).reshape(-1).to(prod.weight.device)
        for pname in ("weight", "bias"):
            _slice_param(prod, pname, keep, 0)
        if bn is not None:
            for pname in ("weight", "bias", "running_mean", "running_var"):
                _slice_param(bn, pname, keep, 0)
            _fix_sizes(bn)
        cols = (keep[:, None] * spatial + torch.arange(spatial, device=keep.device)).reshape(-1)
        _slice_param(consumer, "weight", cols, 1)
        _fix_sizes(prod)
        _fix_sizes(consumer)
        removed[name] = int(dead.sum())
    return removed
