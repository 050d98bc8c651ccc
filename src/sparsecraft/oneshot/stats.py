"""Input statistics of the Linear layers of one block, gathered with forward hooks.

* ``sq``: per input feature j, sum over calibration tokens of x_j^2, so ||X_j||_2 = sqrt(sq)
  (Wanda's activation norm).
* ``H``: sum over tokens of x x^T; :meth:`InputStats.hessian` gives SparseGPT's
  H = (2/n) X X^T with n the number of calibration *sequences*, the reference's scale
  (IST-DASLab/sparsegpt ``add_batch`` counts ``inp.shape[0]`` of each (b, L, in) batch, a 2-D
  input as one). The scale matters: dead inputs get H_jj = 1 on that scale (see
  :mod:`sparsecraft.oneshot.sparsegpt`).

Layers fed the *same tensor* (q/k/v of an attention block, gate/up of a gated MLP) share one
:class:`InputStats` object, so each Hessian is accumulated (and later inverted) once. The
sharing is detected by tensor identity during the first forward pass. Accumulation is one
batched float32 matmul per distinct input per batch.

Fused experts modules (3-D ``gate_up_proj`` / ``down_proj``; :func:`sparsecraft.layout.expert_param_names`)
get one :class:`InputStats` *per expert* from the tokens routed to that expert: the hook reads the
module's call ``(hidden_states, top_k_index, top_k_weights)``; expert e's ``gate_up_proj`` input is
the hidden states of the tokens whose top-k contains e, its ``down_proj`` input is
``act(gate) * up`` recomputed from them with the expert's current weights. They are stored under
the parameter's name (``<module>.gate_up_proj``) as a list with one entry per expert.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.layout import expert_param_names


class InputStats:
    """Running statistics of one layer input of width ``cols``."""

    def __init__(self, cols: int, hessian: bool, device: torch.device | str = "cpu") -> None:
        self.cols = cols
        self.n = 0  #: calibration tokens seen
        self.samples = 0  #: calibration sequences seen (the reference's ``nsamples``)
        self.sq = torch.zeros(cols, dtype=torch.float32, device=device)
        self.H = torch.zeros(cols, cols, dtype=torch.float32, device=device) if hessian else None
        self.cache: dict[str, Any] = {}  #: derived quantities (e.g. SparseGPT's Hinv), per group

    def add(self, x: torch.Tensor) -> None:
        """Add one batch of layer inputs: (b, L, in) counts b sequences, (tokens, in) one."""
        self.samples += x.shape[0] if x.dim() > 2 else 1
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        self.n += x.shape[0]
        self.sq += (x * x).sum(0)
        if self.H is not None:
            self.H.addmm_(x.t(), x)

    @property
    def col_norms(self) -> torch.Tensor:
        """||X_j||_2 over all calibration tokens, per input feature j."""
        return self.sq.sqrt()

    def hessian(self) -> torch.Tensor:
        """H = (2 / samples) sum over tokens of x x^T: SparseGPT's Hessian on the reference's scale."""
        if self.H is None:
            raise RuntimeError("this InputStats was created without a Hessian")
        return self.H * (2.0 / max(self.samples, 1))


class StatsCollector:
    """Context manager: hooks on ``modules`` ({name: module}) that feed :class:`InputStats`.

    Call :meth:`new_pass` before every block forward so that shared inputs are counted once.
    """

    def __init__(self, modules: dict[str, nn.Module], hessian: bool) -> None:
        self.modules = modules
        self.hessian = hessian
        self.stats: dict[str, Any] = {}  #: InputStats, or a list per expert for fused experts
        self._seen: list[tuple[torch.Tensor, InputStats]] = []
        self._handles: list[Any] = []

    def _hook(self, name: str):
        def hook(module: nn.Module, inp: tuple, out: Any) -> None:
            x = inp[0]
            st = self.stats.get(name)
            if st is None:
                st = next((s for t, s in self._seen if t is x), None)
                if st is None:
                    st = InputStats(x.shape[-1], self.hessian, x.device)
                self.stats[name] = st
            if any(s is st for _, s in self._seen):
                return
            st.add(x.detach())
            self._seen.append((x, st))

        return hook

    def new_pass(self) -> None:
        self._seen = []

    def groups(self) -> list[list[str]]:
        """Names of the layers sharing one statistics object, in first-seen order."""
        out: dict[int, list[str]] = {}
        for name, st in self.stats.items():
            out.setdefault(id(st), []).append(name)
        return list(out.values())

    def _expert_hook(self, name: str, params: tuple[str, ...]):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            hidden, index = expert_call_inputs(args, kwargs)
            hidden = hidden.detach().reshape(-1, hidden.shape[-1])
            tokens = expert_token_lists(index.reshape(hidden.shape[0], -1), int(getattr(module, params[0]).shape[0]))
            for e, rows in enumerate(tokens):
                x = hidden[rows]
                for p in params:
                    per = self.stats.setdefault(f"{name}.{p}", [None] * int(getattr(module, p).shape[0]))
                    inp = x if p != "down_proj" else expert_intermediate(module, e, x)
                    if per[e] is None:
                        per[e] = InputStats(inp.shape[-1], self.hessian, inp.device)
                    per[e].add(inp)

        return hook

    def __enter__(self) -> StatsCollector:
        for name, mod in self.modules.items():
            params = expert_param_names(mod)
            if params:
                self._handles.append(mod.register_forward_hook(self._expert_hook(name, params), with_kwargs=True))
            else:
                self._handles.append(mod.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._seen = []


def expert_call_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden_states, top_k_index) of a call ``experts(hidden_states, top_k_index, top_k_weights)``."""
    names = ("hidden_states", "top_k_index")
    vals = list(args[:2]) + [kwargs.get(n) for n in names[len(args[:2]):]]
    if any(v is None for v in vals):
        raise RuntimeError("an experts module was called without (hidden_states, top_k_index, top_k_weights)")
    return vals[0], vals[1]


def expert_token_lists(index: torch.Tensor, n_experts: int) -> list[torch.Tensor]:
    """Per expert, the rows of (T, k) ``index`` whose top-k contains it."""
    flat = index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_experts).tolist()  # ids >= n_experts (padding slots) last
    return [rows // index.shape[1] for rows in order.split(counts)][:n_experts]


def expert_intermediate(module: nn.Module, e: int, x: torch.Tensor) -> torch.Tensor:
    """The input of expert ``e``'s ``down_proj`` for rows ``x``: act(gate) * up (or act(up) for
    experts without a gate), from the module's current ``gate_up_proj`` / ``up_proj`` (transposed
    storage, interleaved gate/up and biases as transformers' experts flags say)."""
    transposed = bool(getattr(module, "is_transposed", False))
    w = getattr(module, "gate_up_proj", None)
    if w is None:
        w = module.up_proj
    w = w[e].t() if transposed else w[e]
    h = F.linear(x, w.to(x.dtype))
    bias = getattr(module, "gate_up_proj_bias" if hasattr(module, "gate_up_proj") else "up_proj_bias", None)
    if getattr(module, "has_bias", False) and bias is not None:
        h = h + bias[e]
    if not getattr(module, "has_gate", True):
        return module.act_fn(h)
    if hasattr(module, "_apply_gate"):
        return module._apply_gate(h)
    gate, up = (h.chunk(2, dim=-1) if getattr(module, "is_concatenated", True) else (h[..., 0::2], h[..., 1::2]))
    return module.act_fn(gate) * up


def expert_output(module: nn.Module, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``e`` of a fused experts module applied to rows ``x`` (before its gate weight)."""
    h = expert_intermediate(module, e, x)
    w = module.down_proj[e]
    w = w.t() if getattr(module, "is_transposed", False) else w
    y = F.linear(h, w.to(h.dtype))
    bias = getattr(module, "down_proj_bias", None)
    if getattr(module, "has_bias", False) and bias is not None:
        y = y + bias[e]
    return y
