"""Run a model with a sparse attention method in the prefill phase, the decode phase or both.

    with sparse_attention(model, "quest", sparsity=0.9, phase="decode") as ctx:
        out = model.generate(ids, max_new_tokens=8)
    ctx.realised_sparsity()   # fraction of causal (query, key) pairs the sparse calls dropped

Registers the ``"sparsecraft_sparse"`` attention with transformers for the duration of the block
(SDPA's mask; modules without a context run plain SDPA). Phases (The Sparse Frontier): ``prefill``
= every multi-token forward is sparse and one-token decode steps are dense; ``decode`` = the
prompt is processed densely (the method may :meth:`observe` it) and every one-token step is
sparse; ``both``. Sparsity 0 is dense attention for every method. This is an accuracy emulation:
the full score matrix is computed and the dropped pairs are masked to -inf before the softmax, so
it measures what the selection costs in quality, not speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from sparsecraft.attention.base import SPARSE_ATTENTION, SparseAttention, causal_mask
from sparsecraft.errors import SparsecraftError

ATTN_NAME = "sparsecraft_sparse"
PHASES = ("prefill", "decode", "both")
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


class SparseAttentionContext:
    """The method, the phase, per-layer state and the counts of kept / causal pairs."""

    def __init__(self, method: SparseAttention, phase: str) -> None:
        self.method, self.phase = method, phase
        self.states: dict[int, dict] = {}
        self.kept = 0
        self.causal = 0

    def realised_sparsity(self) -> float:
        """Fraction of the causal (query, key) pairs of the sparse calls that were dropped."""
        return 1.0 - self.kept / self.causal if self.causal else 0.0

    def is_sparse(self, n_q: int) -> bool:
        return self.phase == "both" or (self.phase == "prefill") == (n_q > 1)


def build_method(method: str | SparseAttention, sparsity: float | None, **kwargs: Any) -> SparseAttention:
    if isinstance(method, SparseAttention):
        if sparsity is not None or kwargs:
            raise SparsecraftError("pass sparsity and options to the method instance, not to sparse_attention")
        return method
    cls = SPARSE_ATTENTION.get(method)
    try:
        return cls(0.8 if sparsity is None else sparsity, **kwargs)
    except TypeError as e:
        raise SparsecraftError(f"bad arguments for sparse attention {method!r}: {e}") from None


def sparse_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None,
                             dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: SDPA unless the module carries a context."""
    ctx: SparseAttentionContext | None = getattr(module, "_sparsecraft_sparse", None)
    if ctx is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    b, hq, n_q, d = query.shape
    total, g = key.shape[-2], hq // key.shape[1]
    k, v = key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)
    q_pos = torch.arange(total - n_q, total, device=query.device)
    allowed = causal_mask(q_pos, total)[None, None]
    if attention_mask is not None:
        allowed = allowed & (attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0)
    state = ctx.states.setdefault(int(getattr(module, "layer_idx", 0)), {})
    if ctx.is_sparse(n_q):
        keep = ctx.method.select(query, k, q_pos, state) & allowed if ctx.method.sparsity > 0 else allowed
        ctx.kept += int(keep.sum())
        ctx.causal += int(allowed.expand_as(keep).sum())
    else:
        keep = allowed
        if n_q > 1:
            ctx.method.observe(query, k, q_pos, state)
    scale = float(scaling) if scaling is not None else d**-0.5
    scores = (query.float() @ k.float().transpose(-1, -2)) * scale
    a = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
    return (a @ v.float()).to(query.dtype).transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(ATTN_NAME, sparse_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a supported decoder (those with a ``layer_idx`` and q/k/v)."""
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family not in FAMILIES:
        raise SparsecraftError(f"sparse attention does not support model family {family!r}; "
                               f"supported: {', '.join(FAMILIES)}")
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    if not mods:
        raise SparsecraftError(f"no attention modules with q_proj/layer_idx found in {type(model).__name__}")
    return mods


@contextmanager
def sparse_attention(model: nn.Module, method: str | SparseAttention, sparsity: float | None = None,
                     phase: str = "prefill", **kwargs: Any) -> Iterator[SparseAttentionContext]:
    """Run ``model`` with sparse attention ``method`` (a registered name or an instance) in
    ``phase``; restores the model's attention afterwards."""
    if phase not in PHASES:
        raise SparsecraftError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    mods = attention_modules(model)
    ctx = SparseAttentionContext(build_method(method, sparsity, **kwargs), phase)
    register()
    old = model.config._attn_implementation
    model.set_attn_implementation(ATTN_NAME)
    for m in mods:
        m._sparsecraft_sparse = ctx
    try:
        yield ctx
    finally:
        for m in mods:
            del m._sparsecraft_sparse
        model.set_attn_implementation(old)
