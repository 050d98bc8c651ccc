"""Removal from masks: make physical what channel / head masks already zeroed.

A channel of a group is removed when the *producer side* of the group -- every weight row, bias,
BatchNorm scale / shift that writes the channel -- is masked out there (``<param>_mask`` all
``False`` on that slice; the masks of sparsecraft.masks, e.g. left by ``mask-sparsity`` or
channel-pattern pruning). The consumers' columns need no mask: they read a channel that is
exactly zero. The rules that keep the removal exact:

* every masked producer slot of a group must mask the same channels -- a mask on one side of a
  residual add only, or on ``gate_proj`` but not ``up_proj``, breaks the group: one-line error
  naming both layers;
* an unmasked producer slot must be zero at the removed channels (a live bias would keep the
  channel alive) unless a BatchNorm after it has its scale and shift masked there (gamma = beta = 0
  silences everything before it): error naming it.

An attention head is removed when its query rows and its output-projection columns are masked
(or zero); one without the other is an error. Key/value heads go with their last query head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import MASK_SUFFIX
from sparsecraft.structure.graph import DependencyGraph, trace
from sparsecraft.structure.labels import Slot
from sparsecraft.structure.remove import Change, apply_plan, head_plan


def _dead(t: torch.Tensor, slot: Slot, size: int) -> torch.Tensor:
    """Per channel: is the slot's slice all False (a mask) / all zero (a tensor)?"""
    live = t != 0 if t.dtype != torch.bool else t
    dims = [d for d in range(live.dim()) if d != slot.dim]
    any_live = live.any(dim=dims) if dims else live
    return ~any_live.reshape(size, slot.spread).any(1).cpu()


def _masks(model: nn.Module, slot: Slot) -> tuple[torch.Tensor, torch.Tensor | None]:
    mod = model.get_submodule(slot.module) if slot.module else model
    mask = getattr(mod, slot.name + MASK_SUFFIX, None)
    return getattr(mod, slot.name).detach(), mask if isinstance(mask, torch.Tensor) else None


def _channel_removals(model: nn.Module, graph: DependencyGraph) -> dict[str, torch.Tensor]:
    keep: dict[str, torch.Tensor] = {}
    for g in graph.channels:
        masked = []
        for slot in g.producers:
            value, mask = _masks(model, slot)
            if mask is not None:
                masked.append((slot, _dead(mask, slot, g.size)))
        if not masked:
            continue
        ref_slot, dead = masked[0]
        for slot, d in masked[1:]:
            if not torch.equal(d, dead):
                c = int(torch.nonzero(d ^ dead)[0])
                raise SparsecraftError(
                    f"the masks break dependency group {g.name}: channel {c} is masked in {ref_slot.qualified} "
                    f"{'but not' if bool(dead[c]) else 'only'} in {slot.qualified}; mask the whole group "
                    f"({', '.join(g.layers)})")
        if not bool(dead.any()):
            continue
        silenced = _silenced(model, graph, g)
        for slot in g.producers:
            value, mask = _masks(model, slot)
            mod = model.get_submodule(slot.module) if slot.module else model
            if slot.name not in mod._parameters:  # running statistics write nothing once the affine part is 0
                continue
            live = dead & ~_dead(value, slot, g.size) & ~silenced.get((slot.module, slot.name), torch.zeros_like(dead))
            if mask is None and bool(live.any()):
                c = int(torch.nonzero(live)[0])
                raise SparsecraftError(
                    f"the masks break dependency group {g.name}: channel {c} is masked in {ref_slot.qualified} but "
                    f"{slot.qualified} is unmasked and non-zero there (the channel stays live); mask the whole group "
                    f"({', '.join(g.layers)})")
        if bool(dead.all()):
            raise SparsecraftError(f"the masks remove every channel of group {g.name} ({', '.join(g.layers)})")
        keep[g.name] = ~dead
    return keep


def _silenced(model: nn.Module, graph: DependencyGraph, g: Any) -> dict[tuple[str, str], torch.Tensor]:
    """Slot -> channels a downstream BatchNorm silences (its scale and shift both masked there)."""
    out: dict[tuple[str, str], torch.Tensor] = {}
    for bn, upstream in graph.shields.items():
        slots = [s for s in g.slots if s.module == bn and s.name in ("weight", "bias")]
        if len(slots) != 2:
            continue
        masks = [_masks(model, s)[1] for s in slots]
        if any(m is None for m in masks):
            continue
        off = _dead(masks[0], slots[0], g.size) & _dead(masks[1], slots[1], g.size)
        for key in upstream:
            out[key] = out.get(key, torch.zeros_like(off)) | off
    return out


def remove_masked(model: nn.Module, graph: DependencyGraph | None = None, example: Any = None) -> Change:
    """Remove every channel group slice and attention head that the model's masks zeroed."""
    graph = graph or trace(model, example)
    keep = _channel_removals(model, graph)
    plan: dict[int, torch.Tensor] = {}
    change = Change("masks")
    for name, k in keep.items():
        plan[graph.channel_group(name).space] = torch.nonzero(k).reshape(-1)
        change.removed[name] = int((~k).sum())
    heads = {}
    for g in graph.heads:
        q_dead = _head_dead(model, graph, g.q[0], g.q[1], g.hq, g.d)
        o_dead = _head_dead(model, graph, g.o, 0, g.hq, g.dv)
        if q_dead is None and o_dead is None:
            continue
        q_dead = q_dead if q_dead is not None else torch.zeros(g.hq, dtype=torch.bool)
        o_dead = o_dead if o_dead is not None else torch.zeros(g.hq, dtype=torch.bool)
        if not torch.equal(q_dead, o_dead):
            h = int(torch.nonzero(q_dead ^ o_dead)[0])
            raise SparsecraftError(f"the masks break head {h} of {g.name}: its query rows and its output-projection "
                                   "columns must both be masked (or both kept)")
        if bool(q_dead.any()):
            p, (hq, hkv) = head_plan(g, ~q_dead, {s: graph.spaces.size[s] for s in (g.q[0], g.k[0], g.v[0])})
            plan.update(p)
            heads[g.name] = (g, hq, hkv)
            change.removed[g.name] = g.hq - hq
    return apply_plan(model, graph, plan, change, heads)


def _head_dead(model: nn.Module, graph: DependencyGraph, space: int, off: int, heads: int, width: int
               ) -> torch.Tensor | None:
    """Per head: are all its slices in ``space`` masked (None when no slot carries a mask)?"""
    size = graph.spaces.size[space]
    dead: torch.Tensor | None = None
    for slot in graph.slots(space):
        value, mask = _masks(model, slot)
        if mask is None or slot.name != "weight":
            continue
        d = _dead(mask, slot, size)[off: off + heads * width].reshape(heads, width).all(1)
        dead = d if dead is None else dead & d
    return dead
