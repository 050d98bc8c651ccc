"""How the tracer binds the channels of leaf layers (modules with their own parameters).

A leaf layer is not traced inside: its input channel dimension is *bound* to the label it reads
(:meth:`LeafRules.bind_in`: the layer's consumer slot joins the producer's space, with a spread
after a channel-major flatten, or becomes an attention site's output projection), and its
output channel dimension gets a fresh producer space. Per kind:

* ``linear`` / ``conv1d_t`` (GPT-2's transposed Conv1D) / ``conv``: weight rows (columns for
  Conv1D) and the bias produce; weight columns consume; a depthwise conv is a per-channel layer,
  other grouped convs freeze both sides;
* ``batchnorm``: a per-channel (*through*) layer; its scale, shift and running statistics join
  the input's space, and it shields the producers before it (``shields``: scale = shift = 0
  silences them);
* ``norm`` (LayerNorm, RMSNorm, GroupNorm): per-channel parameters, but normalising over the
  channels: the space is frozen;
* ``embedding``: its weight's columns produce;
* anything else with parameters: whatever it reads is frozen.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.layout import is_transposed_conv1d
from sparsecraft.structure.labels import Ch, Label, SiteOut, Slot

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def leaf_kind(module: nn.Module) -> str | None:
    """How the tracer treats a module with its own parameters (``None``: not a leaf)."""
    if not any(True for _ in module.parameters(recurse=False)):
        return None
    if isinstance(module, nn.Linear):
        return "linear"
    if is_transposed_conv1d(module):
        return "conv1d_t"
    if isinstance(module, CONVS):
        return "conv"
    if isinstance(module, BNS):
        return "batchnorm"
    if isinstance(module, nn.Embedding):
        return "embedding"
    w = getattr(module, "weight", None)
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)) or (
            "norm" in type(module).__name__.lower() and isinstance(w, torch.Tensor) and w.dim() == 1):
        return "norm"
    return "unknown"


class LeafRules:
    """Mixed into :class:`~sparsecraft.structure.trace.Tracer` (uses its spaces, keys, labels)."""

    # ---- leaf layers --------------------------------------------------------------------
    def bind_in(self, module: str, name: str, dim: int, size: int, lab: Label, role: str = "in") -> int:
        """Bind a layer's input channel dimension (its consumer slot) to the label it reads."""
        layer = module
        module, name = self.canon(module, name)
        key = (module, name, dim)
        if key in self.keys:
            s = self.spaces.find(self.keys[key])
            if lab is not None:
                self.couple([Ch(s, 0, size), lab], f"{module} (called twice)")
            return s
        if isinstance(lab, Ch) and lab.off == 0 and lab.n == self.spaces.size[self.spaces.find(lab.space)] \
                and lab.n * lab.spread == size:
            s = self.spaces.find(lab.space)
            self.spaces.add_slot(s, Slot(module, name, dim, role, lab.spread))
            self.keys[key] = s
            return s
        s = self.slot_space(module, name, dim, size, role)
        if isinstance(lab, SiteOut) and self.sites[lab.site].invalid is None and self.sites[lab.site].o is None:
            site = self.sites[lab.site]
            site.o = s
            self.spaces.sites.setdefault(s, set()).add(site.id)
        elif lab is not None:
            self.spoil(lab, f"read partially by {layer}")
            self.spaces.freeze(s, f"reads a tensor the trace cannot map ({layer})")
        return s

    def _attach(self, s: int, module: str, name: str, role: str) -> None:
        module, name = self.canon(module, name)
        key = (module, name, 0)
        if key in self.keys:
            self.spaces.union(self.keys[key], s)
        else:
            self.spaces.add_slot(s, Slot(module, name, 0, role))
            self.keys[key] = s

    def leaf(self, name: str, module: nn.Module, kind: str, x: Any, out: Any) -> None:
        self.order.append(name)
        lx = self.get(x) if isinstance(x, torch.Tensor) else None
        if not isinstance(out, torch.Tensor):
            for lab in lx or ():
                self.spoil(lab, f"read by {name} ({type(module).__name__})")
            return
        lx = lx or (None,) * out.dim()
        bias = getattr(module, "bias", None) is not None
        if kind in ("linear", "conv1d_t", "conv"):
            cd = 1 if kind == "conv" else -1
            w_in, w_out = (0, 1) if kind == "conv1d_t" else (1, 0)
            groups = getattr(module, "groups", 1)
            if kind == "conv" and groups != 1:
                if groups == module.in_channels == module.out_channels:  # depthwise: a per-channel layer
                    return self._through(name, module, ["weight", "bias"], lx, out, 1, None)
                for lab in lx:
                    self.spoil(lab, f"read by grouped conv {name}")
                out_space = self.slot_space(name, "weight", 0, module.out_channels, "out")
                self.spaces.freeze(out_space, f"grouped conv {name}")
                return
            size_in, size_out = module.weight.shape[w_in], module.weight.shape[w_out]
            self.bind_in(name, "weight", w_in, size_in, lx[cd])
            s = self.slot_space(name, "weight", w_out, size_out, "out")
            if bias:
                self._attach(s, name, "bias", "out")
            res = list(lx) if len(lx) == out.dim() else [None] * out.dim()
            res[cd] = Ch(s, 0, size_out)
            self.put(out, res)
        elif kind == "batchnorm":
            lab = lx[1] if len(lx) > 1 else None
            if isinstance(lab, Ch) and getattr(module, "affine", False):
                self.shields[name] = {(x.module, x.name) for x in self.spaces.slots[self.spaces.find(lab.space)]
                                      if x.role in ("out", "through")}
            self._through(name, module, ["weight", "bias", "running_mean", "running_var"], lx, out, 1, None)
        elif kind == "norm":
            cd = 1 if isinstance(module, nn.GroupNorm) else -1
            self._through(name, module, ["weight", "bias"], lx, out, cd, f"normalised over its channels by {name}")
        elif kind == "embedding":
            s = self.slot_space(name, "weight", 1, module.weight.shape[1], "out")
            self.put(out, [None] * (out.dim() - 1) + [Ch(s, 0, module.weight.shape[1])])
        else:
            for lab in lx:
                self.spoil(lab, f"read by {name} ({type(module).__name__}, a layer the trace does not know)")

    def _through(self, name: str, module: nn.Module, names: list[str], lx: tuple, out: torch.Tensor, cd: int,
                 freeze: str | None) -> None:
        """A per-channel layer (BatchNorm, norm, depthwise conv): input and output share a space."""
        size = out.shape[cd]
        present = [p for p in names if isinstance(getattr(module, p, None), torch.Tensor)
                   and getattr(module, p).dim() >= 1 and getattr(module, p).shape[0] == size]
        if not present:
            for lab in lx:
                self.spoil(lab, f"read by {name} ({type(module).__name__})")
            return
        s = self.bind_in(name, present[0], 0, size, lx[cd] if len(lx) == out.dim() else None, "through")
        for pname in present[1:]:
            self._attach(s, name, pname, "through")
        if freeze:
            self.spaces.freeze(s, freeze)
        res = list(lx) if lx and len(lx) == out.dim() else [None] * out.dim()
        res[cd] = Ch(s, 0, size)
        self.put(out, res)
