"""STEM (Sadhukhan et al. 2026, "STEM: Scaling Transformers with Embedding Modules"): a SwiGLU
FFN whose up-projection is replaced by a layer-local table indexed by the token id.

    y = W_down( silu(W_gate x) * U[t] ),   U: (vocab_size, d_ff) per layer, t = the token's id

Gate and down projections stay dense; the up-projection's d_model x d_ff weights and FLOPs are
gone, replaced by one row read per token (a static, routing-free sparsity: the rows a batch needs
are its token ids, known before the forward runs -- :meth:`STEMFFN.rows_needed`). At equal active
FLOPs a STEM layer can be 1.5x as wide as a dense SwiGLU one (2 matmuls instead of 3).
The table rows start at 1 (so at initialisation the block is a gated linear unit whose up-branch
is the identity) plus N(0, 0.02) noise; the paper's initialisation is not in its abstract, this is
our choice (documented in docs/moe.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.ffn import FFN, check_positive

STEM_OPTIONS = ("d_ff",)


@FFN.register("stem")
class STEMFFN(nn.Module):
    """SwiGLU with the up-projection replaced by a token-indexed table (STEM)."""

    def __init__(self, d_model: int, d_ff: int, vocab_size: int) -> None:
        super().__init__()
        check_positive("d_model", d_model)
        check_positive("d_ff", d_ff)
        check_positive("vocab_size", vocab_size)
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_table = nn.Embedding(vocab_size, d_ff)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)
        self.reset_table()

    @torch.no_grad()
    def reset_table(self) -> None:
        """Rows N(1, 0.02): the up-branch starts as (almost) the identity of the gate branch."""
        self.up_table.weight.normal_(1.0, 0.02)

    @classmethod
    def from_config(cls, config: Any, layer: int) -> STEMFFN:
        opts = dict(config.stem)
        unknown = sorted(set(opts) - set(STEM_OPTIONS))
        if unknown:
            raise SparsecraftError(f"unknown stem option(s) {', '.join(unknown)}; allowed: {', '.join(STEM_OPTIONS)}")
        return cls(config.d_model, opts.get("d_ff", config.d_ff), config.vocab_size)

    @staticmethod
    def rows_needed(token_ids: torch.Tensor) -> torch.Tensor:
        """The table rows a batch reads (sorted unique token ids): what to fetch from host memory."""
        return torch.unique(token_ids)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None,
                fetched: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``fetched = (rows, values)`` (from :meth:`rows_needed` and a table kept elsewhere) replaces
        the lookup in ``up_table``."""
        if token_ids is None:
            raise SparsecraftError("a STEM layer needs the token ids (its up-projection is a table lookup)")
        if fetched is None:
            up = self.up_table(token_ids)
        else:
            rows, values = fetched
            up = values.to(x.dtype)[torch.searchsorted(rows, token_ids)]
        return self.down_proj(F.silu(self.gate_proj(x)) * up)
