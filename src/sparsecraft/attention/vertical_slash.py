"""Vertical-slash patterns (MInference) estimated from the last queries of the prompt."""

from __future__ import annotations

import math

import torch

from sparsecraft.attention.base import SPARSE_ATTENTION, SparseAttention, causal_mask, top_per_row
from sparsecraft.errors import SparsecraftError


def estimate(q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, last_q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(vertical ``[B, H, T]``, slash ``[B, H, T]``) scores from the softmax attention of the last
    ``last_q`` queries: vertical[j] = summed attention on key j, slash[o] = summed attention at
    offset o = position - j (o = 0 is the query itself)."""
    qs, pos = q[:, :, -last_q:].float(), q_pos[-last_q:]
    total = k.shape[-2]
    causal = causal_mask(pos, total)
    a = torch.softmax((qs @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~causal, float("-inf")),
                      dim=-1)
    vertical = a.sum(2)
    offsets = (pos[:, None] - torch.arange(total, device=q.device)[None, :]).clamp(min=0)  # [lq, T]
    slash = torch.zeros_like(vertical).scatter_add_(-1, offsets.reshape(1, 1, -1).expand(*a.shape[:2], -1),
                                                    (a * causal).reshape(*a.shape[:2], -1))
    return vertical, slash


@SPARSE_ATTENTION.register("vertical_slash")
class VerticalSlashAttention(SparseAttention):
    """MInference's vertical-slash pattern (Jiang et al., 2024), as compared in The Sparse Frontier:
    the attention of the last ``last_q`` prompt queries scores every key column (vertical) and
    every diagonal offset (slash); each head keeps its top columns and as many top diagonals, the
    count chosen so that they cover about ``1 - sparsity`` of the causal pairs of the queries at
    hand (:meth:`pattern_size`; one decode query: ``(1 - sparsity) T / 2`` each), the first
    ``sink`` columns and the ``local`` nearest diagonals counting as top.
    A query keeps the selected columns and the keys on the selected
    diagonals (causal part only).

    Prefill: the pattern comes from the forward's own last queries. Decode: from the prompt's last
    queries, remembered by :meth:`observe` during the dense prefill (new tokens have no column
    score and are reached through the diagonals)."""

    unit = "vertical+slash"

    def __init__(self, sparsity: float = 0.8, last_q: int = 64, sink: int = 4, local: int = 16) -> None:
        super().__init__(sparsity)
        for name, v in (("last_q", last_q), ("sink", sink), ("local", local)):
            low = 1 if name == "last_q" else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise SparsecraftError(f"vertical_slash {name} must be an integer >= {low}, got {v!r}")
        self.last_q, self.sink, self.local = last_q, sink, local

    def pattern_size(self, vertical: torch.Tensor, slash: torch.Tensor, q_pos: torch.Tensor,
                     total: int) -> torch.Tensor:
        """Columns (= diagonals) per head so the pattern covers about ``1 - sparsity`` of the causal
        pairs of these queries: column c reaches the queries at positions >= c, diagonal o those at
        positions >= o; taking both in score order, the smallest count whose pairs reach the target
        (overlaps ignored, so the realised sparsity is a little higher). One decode query: half the
        kept keys each."""
        idx = torch.arange(total, device=vertical.device)
        reach = (q_pos[None, :] >= idx[:, None]).sum(1).double()  # queries a column / diagonal reaches
        target = (1.0 - self.sparsity) * float(reach.sum())
        order_c = torch.sort(vertical, dim=-1, descending=True, stable=True).indices
        order_s = torch.sort(slash, dim=-1, descending=True, stable=True).indices
        covered = reach[order_c].cumsum(-1) + reach[order_s].cumsum(-1)  # [B, H, T] pairs with n+1 of each
        n = (covered < target).sum(-1) + 1
        return n.clamp(1, total)

    def observe(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, state: dict) -> None:
        state["vertical"], state["slash"] = estimate(q, k, q_pos, self.last_q)

    def select(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, state: dict) -> torch.Tensor:
        total = k.shape[-2]
        if q.shape[2] > 1 or "vertical" not in state:
            vertical, slash = estimate(q, k, q_pos, self.last_q)
        else:
            vertical, slash = state["vertical"], state["slash"]
        pad = total - vertical.shape[-1]  # decode: the generated tokens have no column score yet
        vertical = torch.nn.functional.pad(vertical, (0, pad)).clone()
        slash = torch.nn.functional.pad(slash, (0, pad)).clone()
        vertical[..., : self.sink] = float("inf")
        slash[..., : self.local] = float("inf")
        half = self.pattern_size(vertical, slash, q_pos, total)
        cols = top_per_row(vertical, half)  # [B, H, T]
        diags = top_per_row(slash, half)
        offsets = (q_pos[:, None] - torch.arange(total, device=q.device)[None, :]).clamp(min=0)  # [Lq, T]
        on_diag = torch.gather(diags.unsqueeze(2).expand(-1, -1, q.shape[2], -1), -1,
                               offsets.expand(*diags.shape[:2], -1, -1))
        return (cols.unsqueeze(2) | on_diag) & causal_mask(q_pos, total)
