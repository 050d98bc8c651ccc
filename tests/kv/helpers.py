"""Tiny Llama models and an independent per-token reference for the KV-cache tests.

The reference does not use sparsecraft: it keeps every key/value dense and, for each new token,
hands SDPA the keys with every vector at distance >= window magnitude-pruned by ``torch.topk``
(random continuous data has no ties). Fed one token at a time it *is* the Mustafar rule."""

from __future__ import annotations

import pytest
import torch


def tiny_llama(seed: int = 0, layers: int = 2, hidden: int = 128, heads: int = 4, kv_heads: int = 2,
               vocab: int = 64):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tr.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    return tr.LlamaForCausalLM(cfg).eval()


def topk_prune(x: torch.Tensor, zeros: int) -> torch.Tensor:
    """Zero the ``zeros`` smallest-|x| entries of every vector (last dim)."""
    if zeros == 0:
        return x.clone()
    drop = x.abs().topk(zeros, dim=-1, largest=False).indices
    return x.scatter(-1, drop, 0.0)


def reference_cache(zeros: int, window: int):
    """A DynamicCache whose single-token updates return keys/values pruned by the rule."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    class Layer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            assert key_states.shape[-2] == 1, "the reference is fed one token at a time"
            k, v = super().update(key_states, value_states)
            t = k.shape[-2] - 1
            old = max(0, t - window + 1)  # keys j with t - j >= window
            k = torch.cat([topk_prune(k[:, :, :old], zeros), k[:, :, old:]], dim=-2)
            v = torch.cat([topk_prune(v[:, :, :old], zeros), v[:, :, old:]], dim=-2)
            return k, v

    cache = DynamicCache()
    cache.layer_class_to_replicate = Layer
    return cache


@torch.no_grad()
def per_token_logits(model, ids: torch.Tensor, cache) -> torch.Tensor:
    return torch.cat([model(ids[:, t : t + 1], cache=cache).logits for t in range(ids.shape[1])], dim=1)
