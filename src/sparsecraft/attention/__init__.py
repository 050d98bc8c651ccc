"""Attention sparsity: training-free sparse attention methods (The Sparse Frontier) and the
gated-attention module (Qiu et al., 2025).

    from sparsecraft.attention import sparse_attention, SPARSE_ATTENTION
    with sparse_attention(model, "vertical_slash", sparsity=0.9, phase="prefill") as ctx:
        logits = model(ids).logits
    print(SPARSE_ATTENTION.names())   # quest, topk, vertical_slash

See docs/attention.md.
"""

from sparsecraft.attention.apply import ATTN_NAME, PHASES, SparseAttentionContext, sparse_attention
from sparsecraft.attention.base import SPARSE_ATTENTION, SparseAttention

__all__ = ["ATTN_NAME", "PHASES", "SPARSE_ATTENTION", "SparseAttention", "SparseAttentionContext",
           "sparse_attention"]
