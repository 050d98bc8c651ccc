"""Gated attention (Qiu et al., 2025, "Gated Attention for Large Language Models"): a sigmoid gate
on the output of scaled-dot-product attention, before the output projection.

    Y = SDPA(Q, K, V)                    # [tokens, heads, head_dim]
    Y' = Y * sigmoid(X W_g)              # X = the attention block's input after its RMSNorm
    out = Y' W_o

``headwise``: W_g maps the hidden size to one scalar per head (broadcast over head_dim);
``elementwise``: one gate per element of every head. The gate depends on the query token, adds a
non-linearity between W_v and W_o and can shut a head off for a token; the paper reports lower
loss, better stability and almost no attention sink. :class:`GatedLlamaAttention` is a drop-in
``LlamaAttention``; :func:`small_llama` builds a small random-init Llama (no download) with or
without gates, and :func:`add_gates` converts an existing Llama-style model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsecraft.errors import SparsecraftError

GATES = ("headwise", "elementwise")


def _llama():
    try:
        from transformers.models.llama import modeling_llama
    except ImportError as e:  # pragma: no cover - transformers is a declared extra
        raise SparsecraftError("gated attention needs transformers: pip install 'sparsecraft[hf]'") from e
    return modeling_llama


def check_gate(gate: Any) -> str | None:
    if gate is None or gate in GATES:
        return gate
    raise SparsecraftError(f"gate must be one of {', '.join(GATES)} or None, got {gate!r}")


def make_gated_attention_class() -> type:
    """``GatedLlamaAttention``, defined on first use so importing this module needs no transformers."""
    ml = _llama()

    class GatedLlamaAttention(ml.LlamaAttention):
        """LlamaAttention with a sigmoid gate on the SDPA output (see the module docstring)."""

        def __init__(self, config: Any, layer_idx: int, gate: str = "headwise") -> None:
            super().__init__(config, layer_idx)
            self.gate = check_gate(gate)
            n_heads = config.num_attention_heads
            self.gate_proj = nn.Linear(config.hidden_size, n_heads * (self.head_dim if gate == "elementwise" else 1),
                                       bias=False)
            self.last_gate: torch.Tensor | None = None  #: the latest gate values (for analysis)

        def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                    attention_mask: torch.Tensor | None = None, cache: Any = None,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
            input_shape = hidden_states.shape[:-1]
            hidden_shape = (*input_shape, -1, self.head_dim)
            q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
            k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
            v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
            cos, sin = position_embeddings
            q, k = ml.apply_rotary_pos_emb(q, k, cos, sin)
            if cache is not None:
                k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            attn = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, ml.eager_attention_forward)
            out, weights = attn(self, q, k, v, attention_mask, dropout=0.0 if not self.training else
                                self.attention_dropout, scaling=self.scaling, **kwargs)
            # out: [B, L, heads, head_dim]; gate from the block's normed input (hidden_states)
            per_head = self.head_dim if self.gate == "elementwise" else 1
            gate = torch.sigmoid(self.gate_proj(hidden_states)).view(*input_shape, -1, per_head)
            self.last_gate = gate.detach()
            out = (out * gate).reshape(*input_shape, -1).contiguous()
            return self.o_proj(out), weights

    return GatedLlamaAttention


_CLASS: dict[str, type] = {}


def gated_attention_class() -> type:
    if "cls" not in _CLASS:
        _CLASS["cls"] = make_gated_attention_class()
    return _CLASS["cls"]


def add_gates(model: nn.Module, gate: str = "headwise", std: float | None = None) -> nn.Module:
    """Replace every ``LlamaAttention`` of ``model`` by a gated one with the same weights (gate
    weights ~ N(0, std), std = the config's ``initializer_range``: gates start near 0.5)."""
    gate = check_gate(gate)
    if gate is None:
        return model
    ml = _llama()
    cls = gated_attention_class()
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama":
        raise SparsecraftError(f"add_gates supports Llama models, got model family "
                               f"{getattr(config, 'model_type', type(model).__name__)!r}")
    std = config.initializer_range if std is None else std
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ml.LlamaAttention) and not isinstance(child, cls):
                new = cls(child.config, child.layer_idx, gate).to(next(child.parameters()).device)
                new.load_state_dict(child.state_dict(), strict=False)
                nn.init.normal_(new.gate_proj.weight, std=std)
                setattr(parent, name, new)
    return model


def small_llama(vocab_size: int, hidden_size: int = 128, layers: int = 4, heads: int = 4, kv_heads: int | None = None,
                intermediate_size: int | None = None, max_positions: int = 1024, gate: str | None = None,
                seed: int = 0, **config: Any) -> nn.Module:
    """A random-init ``LlamaForCausalLM`` built here (no download), optionally with gated attention."""
    gate = check_gate(gate)
    for name, v in (("vocab_size", vocab_size), ("hidden_size", hidden_size), ("layers", layers), ("heads", heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SparsecraftError(f"small_llama {name} must be a positive integer, got {v!r}")
    if hidden_size % heads:
        raise SparsecraftError(f"small_llama hidden_size {hidden_size} must be a multiple of heads {heads}")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                      intermediate_size=intermediate_size or 4 * hidden_size, max_position_embeddings=max_positions,
                      tie_word_embeddings=True, attn_implementation="sdpa", **config)
    model = LlamaForCausalLM(cfg)
    return add_gates(model, gate) if gate else model
