"""KV-cache sparsity (Mustafar): a ``transformers`` cache that magnitude-prunes every K/V vector
leaving the dense window and stores it as 64-bit tile bitmaps + packed values.

    from sparsecraft.kv import SparseKVCache
    cache = SparseKVCache(sparsity=0.7, window=128, model=model)
    out = model.generate(ids, past_key_values=cache, max_new_tokens=32)
    cache.nbytes()   # true bytes held

See docs/kv.md.
"""

from sparsecraft.kv.attention import ATTN_NAME, enable, register
from sparsecraft.kv.cache import SUPPORTED_FAMILIES, SparseKVCache, SparseKVLayer
from sparsecraft.kv.tiles import (
    format_bound_bytes,
    keep_count,
    pack,
    prune_vectors,
    pruned_vector_bytes,
    unpack,
)

__all__ = [
    "ATTN_NAME",
    "SUPPORTED_FAMILIES",
    "SparseKVCache",
    "SparseKVLayer",
    "enable",
    "format_bound_bytes",
    "keep_count",
    "pack",
    "prune_vectors",
    "pruned_vector_bytes",
    "register",
    "unpack",
]
