"""Physical removal: shrink every parameter slice of a channel space to the kept channels.

:func:`remove_channels` and :func:`remove_heads` take keep-masks per group (``True`` = keep),
check all of them against the dependency graph, build every new tensor, and only then swap them
into the model, so a bad request changes nothing. Sparsecraft masks (``<param>_mask`` buffers)
are sliced with their parameters; tied parameters (an embedding shared with the LM head) are
replaced in every module that holds them; layer size attributes (``in_features``,
``out_channels``, ``num_features``, ...) and the head counts of attention modules
(``num_heads``, ``num_key_value_heads``, ``num_key_value_groups``, ``split_size``,
``all_head_size``) follow the new shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import MASK_SUFFIX
from sparsecraft.structure.graph import DependencyGraph, HeadGroup

HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head")
KV_ATTRS = ("num_key_value_heads", "num_kv_heads")


@dataclass
class Change:
    """What one removal did (JSON-friendly through :meth:`to_dict`)."""

    kind: str
    removed: dict[str, int] = field(default_factory=dict)  #: group -> channels / heads removed
    shapes: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)  #: param -> (before, after)
    attrs: dict[str, dict[str, int]] = field(default_factory=dict)  #: module -> attributes set

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "removed": dict(self.removed),
                "shapes": {k: [list(a), list(b)] for k, (a, b) in self.shapes.items()}, "attrs": self.attrs}


def _keep_mask(name: str, mask: Any, size: int, what: str) -> torch.Tensor:
    m = torch.as_tensor(mask).reshape(-1)
    if m.dtype != torch.bool:
        raise SparsecraftError(f"keep mask of {name} must be boolean (True = keep), got {m.dtype}")
    if m.numel() != size:
        raise SparsecraftError(f"keep mask of {name} has {m.numel()} entries for {size} {what}")
    if not bool(m.any()):
        raise SparsecraftError(f"the keep mask would remove every one of the {size} {what} of {name}; "
                               "keep at least one")
    return m.cpu()


def channel_plan(graph: DependencyGraph, keep: Mapping[str, Any]) -> tuple[dict[int, torch.Tensor], dict[str, int]]:
    """Space -> kept indices for channel groups given by name -> keep mask."""
    plan: dict[int, torch.Tensor] = {}
    removed: dict[str, int] = {}
    for name, mask in keep.items():
        g = graph.channel_group(name)
        m = _keep_mask(name, mask, g.size, "channels")
        if not bool(m.all()):
            plan[g.space] = torch.nonzero(m).reshape(-1)
            removed[name] = int((~m).sum())
    return plan, removed


def head_plan(g: HeadGroup, keep_q: Any, sizes: Mapping[int, int]) -> tuple[dict[int, torch.Tensor], tuple[int, int]]:
    """Kept indices of the q / k / v / o spaces for a keep mask over query heads.

    A key/value head goes only with all its query heads; the query heads kept in the remaining
    groups must be equally many (grouped-query attention shares one group size)."""
    m = _keep_mask(g.name, keep_q, g.hq, "query heads")
    per = m.reshape(g.hkv, g.group)
    counts = per.sum(1)
    kv_keep = counts > 0
    live = counts[kv_keep]
    if bool((live != live[0]).any()):
        raise SparsecraftError(
            f"{g.name}: the keep mask leaves {counts.tolist()} query heads in its {g.hkv} key/value groups; "
            "grouped-query attention needs the same number in every kept group (remove query heads evenly per group, "
            "or whole groups)"
        )
    q_heads = torch.nonzero(m).reshape(-1)
    kv_heads = torch.nonzero(kv_keep).reshape(-1)

    def rows(heads: torch.Tensor, off: int, width: int) -> torch.Tensor:
        return (off + heads[:, None] * width + torch.arange(width)).reshape(-1)

    parts: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
    for (space, off), heads, width, n in ((g.q, q_heads, g.d, g.hq), (g.k, kv_heads, g.d, g.hkv),
                                          (g.v, kv_heads, g.dv, g.hkv)):
        parts.setdefault(space, []).append((off, n * width, rows(heads, off, width)))
    plan = {g.o: rows(q_heads, 0, g.dv)}
    return plan | {space: _merge_ranges(ranges, sizes[space]) for space, ranges in parts.items()}, \
        (int(m.sum()), int(kv_keep.sum()))


def _merge_ranges(ranges: list[tuple[int, int, torch.Tensor]], size: int) -> torch.Tensor:
    """Kept indices of a space holding q / k / v ranges (GPT-2's fused ``c_attn`` holds all three);
    channels outside the ranges are kept."""
    pieces, pos = [], 0
    for off, width, idx in sorted(ranges, key=lambda r: r[0]):
        pieces += [torch.arange(pos, off), idx]
        pos = off + width
    return torch.cat([*pieces, torch.arange(pos, size)])


def _modules_holding(model: nn.Module, t: torch.Tensor) -> list[tuple[nn.Module, str]]:
    out = []
    for mod in model.modules():
        for store in (mod._parameters, mod._buffers):
            for k, v in store.items():
                if v is t:
                    out.append((mod, k))
    return out


def apply_plan(model: nn.Module, graph: DependencyGraph, plan: Mapping[int, torch.Tensor], change: Change,
               heads: Mapping[str, tuple[HeadGroup, int, int]] | None = None) -> Change:
    """Slice every slot of every planned space, then swap the new tensors in (all or nothing)."""
    modules = dict(model.named_modules())
    cuts: dict[tuple[str, str], list[tuple[int, torch.Tensor]]] = {}
    for space, idx in plan.items():
        for slot in graph.slots(space):
            if slot.spread > 1:
                idx_s = (idx[:, None] * slot.spread + torch.arange(slot.spread)).reshape(-1)
            else:
                idx_s = idx
            cuts.setdefault((slot.module, slot.name), []).append((slot.dim, idx_s))
    new: list[tuple[torch.Tensor, torch.Tensor, str]] = []
    for (mname, pname), dims in cuts.items():
        mod = modules.get(mname)
        t = getattr(mod, pname, None) if mod is not None else None
        if not isinstance(t, torch.Tensor):
            raise SparsecraftError(f"{mname}.{pname} is gone from the model since it was traced; trace it again")
        for names, tensor in ((pname, t), (pname + MASK_SUFFIX, getattr(mod, pname + MASK_SUFFIX, None))):
            if not isinstance(tensor, torch.Tensor):
                continue
            out = tensor.detach()
            for dim, idx in dims:
                if dim >= out.dim() or (len(idx) and int(idx.max()) >= out.shape[dim]):
                    raise SparsecraftError(f"{mname}.{names} has shape {tuple(out.shape)}, not the one it was traced "
                                           "with; trace the model again before removing")
                out = out.index_select(dim, idx.to(out.device))
            new.append((tensor, out.clone(), f"{mname}.{names}"))
    for old, fresh, qual in new:  # nothing above changed the model; now swap everything in
        value = nn.Parameter(fresh, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else fresh
        holders = _modules_holding(model, old)
        for mod, key in holders:
            if key in mod._parameters:
                mod._parameters[key] = value
            else:
                mod._buffers[key] = value
            _fix_sizes(mod)
        if not qual.endswith(MASK_SUFFIX):
            change.shapes[qual] = (list(old.shape), list(fresh.shape))
    for g, hq, hkv in (heads or {}).values():
        change.attrs[g.name] = _set_head_attrs(modules[g.name], g, hq, hkv)
    return change


def _fix_sizes(mod: nn.Module) -> None:
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor):
        return
    if isinstance(mod, nn.Linear):
        mod.out_features, mod.in_features = w.shape
    elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if mod.groups == mod.in_channels == mod.out_channels and w.shape[1] == 1:  # depthwise
            mod.groups = mod.in_channels = mod.out_channels = w.shape[0]
        else:
            mod.out_channels, mod.in_channels = w.shape[0], w.shape[1] * mod.groups
    elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        mod.num_features = w.shape[0]
    elif isinstance(mod, nn.Embedding):
        mod.num_embeddings, mod.embedding_dim = w.shape
    elif type(mod).__name__ == "Conv1D" and hasattr(mod, "nf"):
        mod.nf = w.shape[1]
        if hasattr(mod, "nx"):
            mod.nx = w.shape[0]


def _set_head_attrs(mod: nn.Module, g: HeadGroup, hq: int, hkv: int) -> dict[str, int]:
    """Head counts of an attention module after removal (only attributes holding the old value)."""
    want = {**{a: (g.hq, hq) for a in HEAD_ATTRS}, **{a: (g.hkv, hkv) for a in KV_ATTRS},
            "num_key_value_groups": (g.group, hq // hkv), "split_size": (g.hq * g.d, hq * g.d),
            "all_head_size": (g.hq * g.d, hq * g.d)}
    done = {}
    for attr, (old, val) in want.items():
        if isinstance(getattr(mod, attr, None), int) and getattr(mod, attr) == old and old != val:
            setattr(mod, attr, val)
            done[attr] = val
    return done


def remove_channels(model: nn.Module, graph: DependencyGraph, keep: Mapping[str, Any]) -> Change:
    """Remove the channels whose keep mask is ``False`` from each named channel group."""
    plan, removed = channel_plan(graph, keep)
    change = Change("channels", removed)
    return apply_plan(model, graph, plan, change)


def remove_heads(model: nn.Module, graph: DependencyGraph, keep: Mapping[str, Any]) -> Change:
    """Remove query heads (and the key/value heads left without query heads) per attention module;
    ``keep`` maps the attention module name to a keep mask over its query heads."""
    plan: dict[int, torch.Tensor] = {}
    heads: dict[str, tuple[HeadGroup, int, int]] = {}
    change = Change("heads")
    for name, mask in keep.items():
        g = graph.head_group(name)
        p, (hq, hkv) = head_plan(g, mask, {s: graph.spaces.size[s] for s in (g.q[0], g.k[0], g.v[0])})
        if hq < g.hq:
            plan.update(p)
            heads[name] = (g, hq, hkv)
            change.removed[name] = g.hq - hq
    return apply_plan(model, graph, plan, change, heads)
