"""Fused experts with dropless execution: tokens sorted by expert, one matmul pair per expert.

Weights are stored as 3-D parameters in the layout of transformers' experts modules (and so
prunable by :func:`sparsecraft.prune` the same way): ``gate_up_proj`` (E, 2 d_expert, d_model),
the gate rows first, and ``down_proj`` (E, d_model, d_expert); expert e computes the SwiGLU
``down_e(silu(gate_e(x)) * up_e(x))``.

Dropless (Gale et al. 2023, "MegaBlocks"): no capacity factor, every token reaches all of its
k experts. The T * k (token, slot) assignments are sorted by expert (a stable sort, so the order
inside an expert follows the tokens). :class:`GroupedSwiGLU` is the autograd function of the
expert part: per expert it gathers its tokens' rows, runs its two matrix products (four in
backward, written into preallocated buffers) and adds the results into their tokens; the
element-wise SwiGLU work runs once over all rows, and the gate weight scales the narrow
(rows, d_expert) activation. Nothing of size (T * k, d_model) is materialised. (Indexing the 3-D
weight per expert inside autograd instead would allocate a full-size zero gradient per expert.)
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
    """out_t = sum over the rows s of token t of r_s * down_e(silu(g_s) * u_s), [g_s, u_s] =
    gate_up_e x_t, for rows sorted by expert (``counts[e]`` rows each, ``token[s]`` their token,
    ``r[s]`` their gate weight). Forward and backward by hand (see the module docstring): each
    expert gathers its tokens' rows, runs its matrix products into preallocated buffers and adds
    its output rows into their tokens; the gate weight scales the narrow (rows, d_expert)
    activation, and its gradient is (gact . act) per row with gact = gy W_down."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, r: torch.Tensor,  # noqa: ANN001
                token: torch.Tensor, counts: list[int]) -> torch.Tensor:
        n, d = token.numel(), w2.shape[2]
        gu = hidden.new_empty(n, 2 * d)
        bounds = _bounds(counts)
        w1s, w2s = w1.unbind(0), w2.unbind(0)
        for e, (a, b) in bounds:
            torch.mm(hidden.index_select(0, token[a:b]), w1s[e].t(), out=gu[a:b])
        act = F.silu(gu[:, :d]).mul_(gu[:, d:])
        scaled = act * r.unsqueeze(-1)
        out = hidden.new_zeros(hidden.shape)
        for e, (a, b) in bounds:
            out.index_add_(0, token[a:b], torch.mm(scaled[a:b], w2s[e].t()))
        ctx.save_for_backward(hidden, w1, w2, r, token, gu, act)
        ctx.bounds = bounds
        return out

    @staticmethod
    def backward(ctx, gout: torch.Tensor):  # noqa: ANN001, ANN205
        hidden, w1, w2, r, token, gu, act = ctx.saved_tensors
        bounds = ctx.bounds
        d = w2.shape[2]
        g, u = gu[:, :d], gu[:, d:]
        w1s, w2s = w1.unbind(0), w2.unbind(0)
        gact = torch.empty_like(act)  # gy W_down per row (before the gate weight)
        gw2 = _expert_grad(w2, bounds) if ctx.needs_input_grad[2] else None
        gw2s = gw2.unbind(0) if gw2 is not None else None
        scaled = act * r.unsqueeze(-1) if gw2 is not None else None
        for e, (a, b) in bounds:
            gy = gout.index_select(0, token[a:b])
            torch.mm(gy, w2s[e], out=gact[a:b])
            if gw2s is not None:
                torch.mm(gy.t(), scaled[a:b], out=gw2s[e])
        gr = (gact * act).sum(-1) if ctx.needs_input_grad[3] else None
        gact.mul_(r.unsqueeze(-1))
        ggu = torch.empty_like(gu)  # [d gate | d up]: silu'(g) * gact * u, gact * silu(g)
        torch.ops.aten.silu_backward(gact * u, g, grad_input=ggu[:, :d])
        torch.mul(gact, F.silu(g), out=ggu[:, d:])
        gx = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        gw1 = _expert_grad(w1, bounds) if ctx.needs_input_grad[1] else None
        gw1s = gw1.unbind(0) if gw1 is not None else None
        for e, (a, b) in bounds:
            if gw1s is not None:
                torch.mm(ggu[a:b].t(), hidden.index_select(0, token[a:b]), out=gw1s[e])
            if gx is not None:
                gx.index_add_(0, token[a:b], torch.mm(ggu[a:b], w1s[e]))
        return gx, gw1, gw2, gr, None, None


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
        order, token, counts = sort_by_expert(top_k_index, self.num_experts)
        r = top_k_weights.reshape(-1).to(hidden.dtype).index_select(0, order)
        return GroupedSwiGLU.apply(hidden, self.gate_up_proj, self.down_proj, r, token, counts)

    def extra_repr(self) -> str:
        return f"{self.num_experts} experts, {self.d_model} -> {self.d_expert} -> {self.d_model}"
