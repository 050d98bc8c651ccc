"""Quest-style page selection from per-page key min/max (the block/page unit)."""

from __future__ import annotations

import torch

from sparsecraft.attention.base import SPARSE_ATTENTION, SparseAttention, budget, causal_mask, top_per_row
from sparsecraft.errors import SparsecraftError


def page_bounds(k: torch.Tensor, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise (min, max) of the keys of every page: ``[B, H, n_pages, D]`` each (the last
    page may be partial)."""
    b, h, t, d = k.shape
    n_pages = -(-t // page_size)
    pad = n_pages * page_size - t
    kf = k.float()
    lo = torch.nn.functional.pad(kf, (0, 0, 0, pad), value=float("inf")).view(b, h, n_pages, page_size, d)
    hi = torch.nn.functional.pad(kf, (0, 0, 0, pad), value=float("-inf")).view(b, h, n_pages, page_size, d)
    return lo.amin(3), hi.amax(3)


def page_scores(q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Quest's upper bound of q . k over a page: ``sum_d max(q_d lo_d, q_d hi_d)`` =
    ``q+ . hi + q- . lo`` (q+ / q- the positive / negative parts). ``[B, H, Lq, n_pages]``."""
    qf = q.float()
    return qf.clamp(min=0) @ hi.transpose(-1, -2) + qf.clamp(max=0) @ lo.transpose(-1, -2)


@SPARSE_ATTENTION.register("quest")
class QuestAttention(SparseAttention):
    """Quest (Tang et al., 2024): keys in pages of ``page_size`` tokens summarised by their
    elementwise min and max; a query scores each page by ``sum_d max(q_d min_d, q_d max_d)`` (an
    upper bound of its q . k there) and keeps the query's own page plus the best pages up to
    ``ceil((1 - sparsity) n_pages)`` of its causal pages.

    The same rule serves both phases: in prefill every query selects its own pages (block-sparse
    prefill), in decode the new token does (Quest proper)."""

    unit = "page"

    def __init__(self, sparsity: float = 0.8, page_size: int = 16) -> None:
        super().__init__(sparsity)
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise SparsecraftError(f"quest page_size must be an integer >= 1, got {page_size!r}")
        self.page_size = page_size

    def select(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, state: dict) -> torch.Tensor:
        total, p = k.shape[-2], self.page_size
        lo, hi = page_bounds(k, p)
        n_pages = lo.shape[2]
        scores = page_scores(q, lo, hi)
        own = (q_pos // p)[:, None]  # [Lq, 1]
        pages = torch.arange(n_pages, device=q.device)[None, :]
        scores = scores.masked_fill(pages > own, float("-inf")).masked_fill(pages == own, float("inf"))
        keep_pages = top_per_row(scores, budget(self.sparsity, own[:, 0] + 1)) | (pages == own)
        keep = keep_pages.repeat_interleave(p, dim=-1)[..., :total]
        return keep & causal_mask(q_pos, total)
