"""The dependency graph of a model: its removable channel groups and attention head groups.

``trace(model)`` runs :func:`sparsecraft.structure.trace.run_trace` once and keeps

* :class:`ChannelGroup` -- a channel space that can shrink: every parameter slice indexed by its
  channels (the producers' rows and biases, BatchNorms, the consumers' columns), e.g. the
  intermediate channels of a transformer MLP (``gate_proj``/``up_proj`` rows with the matching
  ``down_proj`` columns) or the output channels of a conv with its BatchNorm and every conv that
  reads it, across residual adds;
* :class:`HeadGroup` -- one attention op with its query / key / value spaces, the head counts
  (grouped-query attention: ``hq`` query heads share ``hkv`` key/value heads) and the output
  projection's columns;
* ``frozen`` -- the spaces that cannot shrink, each with the reason (for error messages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.structure.labels import Slot, Spaces
from sparsecraft.structure.trace import Site, run_trace


@dataclass
class ChannelGroup:
    """Channels that can only be removed together (the same index from every slot)."""

    name: str
    size: int
    space: int
    slots: list[Slot]

    @property
    def producers(self) -> list[Slot]:
        return [s for s in self.slots if s.role in ("out", "through")]

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(s.module for s in self.slots))


@dataclass
class HeadGroup:
    """The heads of one attention op (``name`` is the attention module)."""

    name: str
    hq: int
    hkv: int
    d: int
    dv: int
    q: tuple[int, int]
    k: tuple[int, int]
    v: tuple[int, int]
    o: int

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.hq // self.hkv


@dataclass
class DependencyGraph:
    spaces: Spaces
    channels: list[ChannelGroup] = field(default_factory=list)
    heads: list[HeadGroup] = field(default_factory=list)
    frozen: dict[str, str] = field(default_factory=dict)  #: first layer of a frozen space -> why
    shields: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  #: BatchNorm -> slots upstream of it

    def channel_group(self, name: str) -> ChannelGroup:
        for g in self.channels:
            if g.name == name:
                return g
        raise SparsecraftError(f"no removable channel group {name!r}" + self._why(name)
                               + f"; groups: {', '.join(g.name for g in self.channels[:6]) or 'none'}"
                               + (" ..." if len(self.channels) > 6 else ""))

    def head_group(self, name: str) -> HeadGroup:
        for g in self.heads:
            if g.name == name:
                return g
        raise SparsecraftError(f"no removable attention head group {name!r}" + self._why(name)
                               + f"; attention modules: {', '.join(g.name for g in self.heads[:6]) or 'none'}")

    def _why(self, name: str) -> str:
        return f" ({self.frozen[name]})" if name in self.frozen else ""

    def slots(self, space: int) -> list[Slot]:
        return self.spaces.slots[self.spaces.find(space)]

    def describe(self) -> str:
        lines = [f"{len(self.channels)} channel groups, {len(self.heads)} attention head groups, "
                 f"{len(self.frozen)} frozen spaces"]
        for g in self.channels:
            lines.append(f"  channels {g.name:<40} {g.size:>6}  {', '.join(g.layers)}")
        for h in self.heads:
            lines.append(f"  heads    {h.name:<40} {h.hq:>3} q / {h.hkv} kv x {h.d}")
        for name, why in self.frozen.items():
            lines.append(f"  frozen   {name:<40} {why}")
        return "\n".join(lines)


def default_example(model: nn.Module) -> Any:
    """A short token sequence for a Hugging Face model (the trace needs one forward)."""
    cfg = getattr(model, "config", None)
    vocab = getattr(cfg, "vocab_size", None)
    if not isinstance(vocab, int):
        raise SparsecraftError(
            f"cannot trace {type(model).__name__} without an example input: pass example=tensor (or a tuple / "
            "dict of inputs) with the shape one forward pass takes"
        )
    ids = (torch.arange(8) * 7 % vocab).reshape(1, 8)
    device = next(model.parameters()).device
    example: dict[str, Any] = {"input_ids": ids.to(device)}
    if getattr(cfg, "use_cache", None) is not None:
        example["use_cache"] = False
    return example


def build_graph(tracer: Any) -> DependencyGraph:
    sp: Spaces = tracer.spaces
    order = {name: i for i, name in enumerate(dict.fromkeys(tracer.order))}
    graph = DependencyGraph(sp, shields=dict(tracer.shields))

    def first(slots: list[Slot], roles: tuple[str, ...]) -> str:
        cands = [s.module for s in slots if s.role in roles] or [s.module for s in slots]
        return min(cands, key=lambda m: order.get(m, len(order)))

    site_spaces: set[int] = set()
    for site in tracer.sites:
        head = _head_group(sp, site)
        if isinstance(head, HeadGroup):
            graph.heads.append(head)
        else:
            graph.frozen[site.module] = head
        site_spaces.update(sp.find(s) for s in (site.q[0], site.k[0], site.v[0]) if s is not None)
        if site.o is not None:
            site_spaces.add(sp.find(site.o))
    for root in sp.roots():
        slots = sp.slots[root]
        if not slots or root in site_spaces or root in sp.heads:
            continue
        name = first(slots, ("out", "through"))
        if root in sp.frozen:
            if any(s.role == "out" for s in slots):
                graph.frozen.setdefault(name, sp.frozen[root])
            continue
        if any(s.role in ("out", "through") for s in slots) and sp.size[root] >= 2:
            graph.channels.append(ChannelGroup(name, sp.size[root], root, list(slots)))
    graph.channels.sort(key=lambda g: order.get(g.name, len(order)))
    return graph


def _head_group(sp: Spaces, site: Site) -> HeadGroup | str:
    if site.invalid:
        return site.invalid
    if site.o is None:
        return "its output is not read by one output projection"
    for s in (site.q[0], site.k[0], site.v[0], site.o):
        if sp.is_frozen(s):
            return f"{sp.reason(s)}"
        if sp.sites.get(sp.find(s), {site.id}) != {site.id}:
            return "its projections are shared with another attention op"
    return HeadGroup(site.module, site.hq, site.hkv, site.d, site.dv, (sp.find(site.q[0]), site.q[1]),
                     (sp.find(site.k[0]), site.k[1]), (sp.find(site.v[0]), site.v[1]), sp.find(site.o))


def trace(model: nn.Module, example: Any = None) -> DependencyGraph:
    """The dependency graph of ``model`` from one traced forward pass on ``example`` (default:
    8 token ids for a Hugging Face model; any tensor / tuple / dict of inputs otherwise)."""
    if not isinstance(model, nn.Module):
        raise SparsecraftError(f"trace() expects a torch.nn.Module, got {type(model).__name__}")
    return build_graph(run_trace(model, default_example(model) if example is None else example))
