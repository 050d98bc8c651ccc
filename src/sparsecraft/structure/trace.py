"""Trace a model once and record which parameter slices share channels.

The trace runs one forward pass on a small example input under a ``TorchDispatchMode`` that
sees every ATen op, plus forward hooks on the *leaf layers* (modules with their own
parameters: Linear, GPT-2 Conv1D, Conv, BatchNorm, LayerNorm / RMSNorm, Embedding). Inside a
leaf layer nothing is traced: the layer's output channel dimension gets a fresh label (its
producer space) and its input channel dimension is bound to its consumer slot. Between
layers every op carries the labels of its inputs to its outputs (:mod:`sparsecraft.structure.ops`),
so the dependency graph comes from the model's own forward, not from a per-architecture list:
a residual add merges spaces, a gate x up product couples a gated MLP, a ``view`` into heads
followed by scaled-dot-product attention makes an attention site with its query / key / value
spaces and the output projection that reads it.

The idea of propagating channel indices through the ops of one traced forward is Torch-Pruning's
dependency graph (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning"); this tracer
works on ATen ops and dimension labels instead of the autograd graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sparsecraft.structure import ops
from sparsecraft.structure.labels import Ch, Heads, Label, SiteHeads, SiteOut, SiteWithin, Slot, Spaces, Within
from sparsecraft.structure.leaves import LeafRules, leaf_kind


@dataclass
class Site:
    """One attention op: query / key / value spaces (space, offset), head counts and sizes, and
    the consumer space ``o`` that reads its merged output (the output projection's columns)."""

    id: int
    module: str
    q: tuple[int, int]
    k: tuple[int, int]
    v: tuple[int, int]
    hq: int
    hkv: int
    d: int
    dv: int
    o: int | None = None
    invalid: str | None = None


class Tracer(LeafRules, TorchDispatchMode):
    """Dimension labels of every tensor of one forward pass, and the spaces they refer to."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.spaces = Spaces()
        self.sites: list[Site] = []
        self.keys: dict[tuple[str, str, int], int] = {}  #: (module, param, dim) -> space
        self.labels: dict[int, tuple[torch.Tensor, tuple[Label, ...]]] = {}
        self.depth = 0
        self.stack: list[str] = []
        self.param_names: dict[int, tuple[str, str]] = {}
        for mname, mod in model.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                self.param_names.setdefault(id(p), (mname, pname))
        self.modules = dict(model.named_modules())
        #: BatchNorm -> the (module, param) slots upstream of it: gamma = beta = 0 silences them all
        self.shields: dict[str, set[tuple[str, str]]] = {}
        self.order: list[str] = []  #: leaf modules in call order

    # ---- labels -------------------------------------------------------------------------
    def get(self, t: Any) -> tuple[Label, ...] | None:
        if not isinstance(t, torch.Tensor):
            return None
        rec = self.labels.get(id(t))
        if rec is not None and rec[0] is t:
            return rec[1]
        if id(t) in self.param_names and self.depth == 0:
            return self._param_labels(t)
        return None

    def put(self, t: Any, labels: list[Label] | tuple[Label, ...]) -> None:
        if isinstance(t, torch.Tensor) and any(lab is not None for lab in labels):
            self.labels[id(t)] = (t, tuple(labels))

    def _param_labels(self, p: torch.Tensor) -> tuple[Label, ...]:
        """A parameter used by an op outside its layer: each of its dims is a space of its own."""
        mname, pname = self.param_names[id(p)]
        labs = tuple(Ch(s, 0, p.shape[d]) if p.shape[d] > 1 else None
                     for d in range(p.dim()) for s in [self.slot_space(mname, pname, d, p.shape[d], "through")])
        self.put(p, labs)
        return labs

    def canon(self, module: str, name: str) -> tuple[str, str]:
        """The first (module, name) under which a parameter is registered (tied weights share it)."""
        mod = self.modules.get(module)
        t = getattr(mod, name, None) if mod is not None else None
        return self.param_names.get(id(t), (module, name)) if isinstance(t, nn.Parameter) else (module, name)

    def slot_space(self, module: str, name: str, dim: int, size: int, role: str, spread: int = 1) -> int:
        module, name = self.canon(module, name)
        key = (module, name, dim)
        if key not in self.keys:
            self.keys[key] = self.spaces.new(size)
            self.spaces.add_slot(self.keys[key], Slot(module, name, dim, role, spread))
        return self.spaces.find(self.keys[key])

    def spoil(self, lab: Label, reason: str) -> None:
        """Freeze whatever ``lab`` refers to (a space, or an attention site's spaces)."""
        if isinstance(lab, (Ch, Heads, Within)):
            self.spaces.freeze(lab.space, reason)
        elif isinstance(lab, (SiteHeads, SiteWithin, SiteOut)):
            site = self.sites[lab.site]
            site.invalid = site.invalid or reason
            for s in (site.q[0], site.k[0], site.v[0], site.o):
                if s is not None:
                    self.spaces.freeze(s, f"attention output {reason}")

    def couple(self, labs: list[Label], what: str) -> Label:
        """Labels meeting element-wise at one dimension: identical, or two whole spaces merged."""
        first = labs[0]
        for lab in labs[1:]:
            if lab == first:
                continue
            if isinstance(first, Ch) and isinstance(lab, Ch) and self._whole(first) and self._whole(lab):
                root = self.spaces.union(first.space, lab.space)
                first = Ch(root, 0, self.spaces.size[root])
                continue
            for x in labs:
                self.spoil(x, f"combined with other channels by {what}")
            return None
        return first

    def _whole(self, lab: Ch) -> bool:
        return lab.off == 0 and lab.spread == 1 and lab.n == self.spaces.size[self.spaces.find(lab.space)]

    # ---- ops ----------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth:
            return out
        flat, _ = tree_flatten((args, kwargs))
        labs = {id(t): self.get(t) for t in flat if isinstance(t, torch.Tensor)}
        if not any(v is not None for v in labs.values()):
            return out
        name = func.overloadpacket.__name__
        what = f"aten.{name}" + (f" in {self.stack[-1]}" if self.stack and self.stack[-1] else "")
        base = name[:-1] if name.endswith("_") and not name.startswith("_") else name
        if base in ops.POINTWISE:
            shape = out[0].shape if isinstance(out, (tuple, list)) else out.shape
            inputs = [(labs.get(id(t)), t.shape) for t in flat if isinstance(t, torch.Tensor)]
            res = ops.broadcast(self, inputs, shape, what)
            target = args[0] if base != name else (out[0] if isinstance(out, (tuple, list)) else out)
            self.put(target, res)
        elif base in ops.SHAPE_OPS and base != "cat":
            res = ops.shape_op(self, base, args, kwargs, out, labs[id(args[0])] or (None,) * args[0].dim(), what)
            if base in ("split", "split_with_sizes"):
                for o, lab in zip(out, res):
                    self.put(o, lab)
            else:
                self.put(out, res)
        elif base == "cat":
            self._cat(args, kwargs, out, what)
        elif base in ops.REDUCTIONS or base in ops.SOFTMAX:
            self._reduce(base, args, kwargs, out, labs, what)
        elif base in ops.POOLING:
            x = labs.get(id(args[0])) or ()
            for o in (out if isinstance(out, (tuple, list)) else [out]):
                self.put(o, list(x[:2]) + [None] * (o.dim() - 2))
            for lab in x[2:]:
                if lab is not None:
                    self.spoil(lab, f"pooled by {what}")
        elif base in ops.ATTENTION:
            self.attention(args, out, labs, what)
        else:
            for v in labs.values():
                for lab in v or ():
                    if lab is not None:
                        self.spoil(lab, f"used by {what}")
        return out

    def _cat(self, args: tuple, kwargs: dict, out: torch.Tensor, what: str) -> None:
        tensors = [t for t in args[0] if isinstance(t, torch.Tensor) and t.dim() == out.dim()]
        d = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
        labs = [self.get(t) or (None,) * t.dim() for t in tensors]
        res: list[Label] = []
        for k in range(out.dim()):
            if k == d:
                res.append(ops.cat_label(self, [lab[k] for lab in labs], [t.shape[k] for t in tensors], what))
            else:
                found = [lab[k] for lab in labs if lab[k] is not None]
                res.append(self.couple(found, what) if found else None)
        self.put(out, res)

    def _reduce(self, name: str, args: tuple, kwargs: dict, out: Any, labs: dict, what: str) -> None:
        x = args[0]
        lab = labs.get(id(x)) or (None,) * x.dim()
        if name in ops.SOFTMAX:
            dims, keep = [args[1] % max(x.dim(), 1)], True
        else:
            dims = ops._dims(args[1] if len(args) > 1 else kwargs.get("dim"), x.dim())
            keep = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False))
        for d in dims:
            if lab[d] is not None:
                self.spoil(lab[d], f"reduced over its channels by {what}")
        res = [None if i in dims else lab[i] for i in range(x.dim()) if keep or i not in dims]
        for o in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(o, torch.Tensor) and o.dim() == len(res):
                self.put(o, res)

    def attention(self, args: tuple, out: Any, labs: dict, what: str) -> None:
        """Scaled-dot-product attention on (batch, heads, tokens, head_dim) q, k, v."""
        q, k, v = args[:3]
        lq, lk, lv = (labs.get(id(t)) or (None,) * 4 for t in (q, k, v))
        ok = all(isinstance(lab[1], Heads) and isinstance(lab[3], Within) and lab[0] is None and lab[2] is None
                 for lab in (lq, lk, lv)) and q.dim() == 4
        if ok:
            hq_l, hk_l, hv_l = lq[1], lk[1], lv[1]
            hkv = k.shape[1] // hk_l.repeat
            ok = (hq_l.repeat == 1 and hk_l.repeat == hv_l.repeat and hkv > 0 and q.shape[1] % hkv == 0
                  and hq_l.inner == q.shape[3] and hk_l.inner == k.shape[3] and hv_l.inner == v.shape[3])
        if not ok:
            for lab in (*lq, *lk, *lv):
                if lab is not None:
                    self.spoil(lab, f"attention inputs not in (batch, heads, tokens, head_dim) layout at {what}")
            return
        site = Site(len(self.sites), self.stack[-1] if self.stack else "",
                    (self.spaces.find(hq_l.space), hq_l.off), (self.spaces.find(hk_l.space), hk_l.off),
                    (self.spaces.find(hv_l.space), hv_l.off), q.shape[1], hkv, q.shape[3], v.shape[3])
        self.sites.append(site)
        for s in (site.q[0], site.k[0], site.v[0]):
            self.spaces.heads.add(self.spaces.find(s))
            self.spaces.sites.setdefault(self.spaces.find(s), set()).add(site.id)
        o = out[0] if isinstance(out, (tuple, list)) else out
        self.put(o, [None, SiteHeads(site.id), None, SiteWithin(site.id)])


def run_trace(model: nn.Module, example: Any) -> Tracer:
    """Trace ``model`` on ``example`` (a tensor, a tuple of positional inputs or a dict of
    keyword inputs) and return the tracer with its spaces and attention sites."""
    tracer = Tracer(model)
    handles = []
    for name, mod in model.named_modules():
        kind = leaf_kind(mod)
        if kind is not None and not any(leaf_kind(c) for c in mod.modules() if c is not mod):
            handles.append(mod.register_forward_pre_hook(_enter(tracer), with_kwargs=True))
            handles.append(mod.register_forward_hook(_leave(tracer, name, kind), with_kwargs=True))
        else:
            handles.append(mod.register_forward_pre_hook(_push(tracer, name)))
            handles.append(mod.register_forward_hook(_pop(tracer)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tracer:
            if isinstance(example, dict):
                out = model(**example)
            elif isinstance(example, (tuple, list)):
                out = model(*example)
            else:
                out = model(example)
        flat, _ = tree_flatten(out if not hasattr(out, "to_tuple") else out.to_tuple())
        for t in flat:
            for lab in tracer.get(t) or ():
                if lab is not None:
                    tracer.spoil(lab, "part of the model output")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return tracer


def _first_tensor(args: tuple, kwargs: dict) -> Any:
    flat, _ = tree_flatten((args, kwargs))
    return next((t for t in flat if isinstance(t, torch.Tensor)), None)


def _enter(tracer: Tracer):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = _first_tensor(args, kwargs)
        module._sparsecraft_trace_input = (x, tracer.get(x) if tracer.depth == 0 else None)
        tracer.depth += 1
    return hook


def _leave(tracer: Tracer, name: str, kind: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        tracer.depth -= 1
        x, _ = module.__dict__.pop("_sparsecraft_trace_input", (None, None))
        if tracer.depth == 0:
            tracer.leaf(name, module, kind, x, out)
    return hook


def _push(tracer: Tracer, name: str):
    def hook(module: nn.Module, args: tuple) -> None:
        tracer.stack.append(name)
    return hook


def _pop(tracer: Tracer):
    def hook(module: nn.Module, args: tuple, out: Any) -> None:
        if tracer.stack:
            tracer.stack.pop()
    return hook
