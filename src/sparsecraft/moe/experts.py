"""Fused experts with dropless execution: tokens sorted by expert, one matmul pair per expert.

Weights are stored as 3-D parameters in the layout of transformers' experts modules (and so
prunable by :func:`sparsecraft.prune` the same way): ``gate_up_proj`` (E, 2 d_expert, d_model),
the gate rows first, and ``down_proj`` (E, d_model, d_expert); expert e computes the SwiGLU
``down_e(silu(gate_e(x)) * up_e(x))``.

Dropless (Gale et al. 2023, "MegaBlocks"): no capacity factor, every token reaches all of its
k experts. The T * k (token, slot) rows are sorted by expert (a stable sort, so the order inside
an expert follows the tokens; the permutation and its inverse move rows and gradients both ways,
with no zero-filled scatter), each expert's contiguous slice is multiplied by its two matrices,
and the rows go back to token order and are summed over the k slots. :class:`GroupedSwiGLU` is the
autograd function of the expert part: per expert only its matrix products run (two forward, four
backward, written into preallocated buffers), the element-wise SwiGLU work runs once over all
rows, and the gate weight scales the narrow (rows, d_expert) activation. (Indexing the 3-D weight
per expert inside autograd instead would allocate a full-size zero gradient per expert.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.router import check_n_experts


def sort_by_expert(top_k_index: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(order, token of each sorted assignment, rows per expert) for (T, k) expert indices:
    ``order`` sorts the flattened assignments by expert (stable), ``token = order // k``."""
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_experts).tolist()
    return order, order // top_k_index.shape[-1], counts


class GroupedSwiGLU(torch.autograd.Function):
    """y_s = r_s * down_e(silu(g_s) * u_s), [g_s, u_s] = gate_up_e x_s for the rows s of expert e,
    r_s the row's gate weight; rows sorted by expert, ``counts[e]`` rows each (forward and backward
    by hand, see the module docstring). The gate weight scales the (rows, d_expert) activation
    before the down projection, the narrower side, and its gradient is (gact . act) per row with
    gact = gy W_down, which the backward computes anyway."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, r: torch.Tensor,  # noqa: ANN001
                counts: list[int]) -> torch.Tensor:
        n, d = x.shape[0], w2.shape[2]
        gu = x.new_empty(n, 2 * d)
        y = x.new_empty(n, w2.shape[1])
        bounds = _bounds(counts)
        for e, (a, b) in bounds:
            torch.mm(x[a:b], w1[e].t(), out=gu[a:b])
        g, u = gu[:, :d], gu[:, d:]
        act = F.silu(g).mul_(u)
        scaled = act * r.unsqueeze(-1)
        for e, (a, b) in bounds:
            torch.mm(scaled[a:b], w2[e].t(), out=y[a:b])
        ctx.save_for_backward(x, w1, w2, r, gu, act)
        ctx.bounds = bounds
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):  # noqa: ANN001, ANN205
        x, w1, w2, r, gu, act = ctx.saved_tensors
        bounds = ctx.bounds
        d = w2.shape[2]
        gy = gy.contiguous()
        g, u = gu[:, :d], gu[:, d:]
        gact = torch.empty_like(act)  # gy W_down (before the gate weight)
        for e, (a, b) in bounds:
            torch.mm(gy[a:b], w2[e], out=gact[a:b])
        gr = (gact * act).sum(-1) if ctx.needs_input_grad[3] else None
        gw2 = None
        if ctx.needs_input_grad[2]:
            gw2 = _expert_grad(w2, bounds)
            scaled = act * r.unsqueeze(-1)
            for e, (a, b) in bounds:
                torch.mm(gy[a:b].t(), scaled[a:b], out=gw2[e])
        gact.mul_(r.unsqueeze(-1))
        ggu = torch.empty_like(gu)  # [d gate | d up]: silu'(g) * gact * u, gact * silu(g)
        torch.ops.aten.silu_backward(gact * u, g, grad_input=ggu[:, :d])
        torch.mul(gact, F.silu(g), out=ggu[:, d:])
        gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        gw1 = _expert_grad(w1, bounds) if ctx.needs_input_grad[1] else None
        for e, (a, b) in bounds:
            if gw1 is not None:
                torch.mm(ggu[a:b].t(), x[a:b], out=gw1[e])
            if gx is not None:
                torch.mm(ggu[a:b], w1[e], out=gx[a:b])
        return gx, gw1, gw2, gr, None


def _expert_grad(w: torch.Tensor, bounds: list[tuple[int, tuple[int, int]]]) -> torch.Tensor:
    """An uninitialised gradient for ``w`` whose experts without rows are zeroed (the others are
    written whole by the backward loop)."""
    g = torch.empty_like(w)
    used = {e for e, _ in bounds}
    for e in range(w.shape[0]):
        if e not in used:
            g[e].zero_()
    return g


def _bounds(counts: list[int]) -> list[tuple[int, tuple[int, int]]]:
    out, start = [], 0
    for e, n in enumerate(counts):
        if n:
            out.append((e, (start, start + n)))
        start += n
    return out


class Permute(torch.autograd.Function):
    """Rows of ``x`` in the order of the permutation ``perm`` (its inverse ``inv`` sends gradients
    back: a gather both ways, no zero-filled scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(inv)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        (inv,) = ctx.saved_tensors
        return g.index_select(0, inv), None, None


class FusedExperts(nn.Module):
    """E SwiGLU experts in two 3-D parameters; ``forward(hidden, top_k_index, top_k_weights)``
    has the signature of transformers' experts modules (so the same calibration hooks serve both)."""

    #: the 3-D weights :func:`sparsecraft.targets.find_targets` prunes (N:M along d_model / d_expert)
    sparsecraft_expert_params = ("gate_up_proj", "down_proj")
    is_transposed = False
    is_concatenated = True
    has_gate = True
    has_bias = False

    def __init__(self, n_experts: int, d_model: int, d_expert: int) -> None:
        super().__init__()
        self.num_experts = check_n_experts(n_experts)
        if isinstance(d_expert, bool) or not isinstance(d_expert, int) or d_expert < 1:
            raise SparsecraftError(f"expert_dim must be an integer >= 1, got {d_expert!r}")
        self.d_model, self.d_expert = d_model, d_expert
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * d_expert, d_model))
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, d_expert))
        nn.init.normal_(self.gate_up_proj, std=1.0 / math.sqrt(d_model))
        nn.init.normal_(self.down_proj, std=1.0 / math.sqrt(d_expert))
        self.act_fn = F.silu

    def _apply_gate(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act_fn(gate) * up

    def expert_forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` alone on rows ``x`` (for statistics and tests)."""
        return F.linear(self._apply_gate(F.linear(x, self.gate_up_proj[e])), self.down_proj[e])

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        order, _, counts = sort_by_expert(top_k_index, self.num_experts)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        t, k = top_k_index.shape
        slots = hidden if k == 1 else hidden.unsqueeze(1).expand(t, k, hidden.shape[-1]).reshape(t * k, -1)
        x = Permute.apply(slots, order, inverse)  # one row per (token, slot), sorted by expert
        r = Permute.apply(top_k_weights.reshape(-1).to(x.dtype), order, inverse)
        y = GroupedSwiGLU.apply(x, self.gate_up_proj, self.down_proj, r, counts)
        y = Permute.apply(y, inverse, order)  # back to (token, slot) order, summed over the k slots
        return y if k == 1 else y.view(t, k, -1).sum(1)

    def extra_repr(self) -> str:
        return f"{self.num_experts} experts, {self.d_model} -> {self.d_expert} -> {self.d_model}"
