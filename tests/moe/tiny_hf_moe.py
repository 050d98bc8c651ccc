"""Tiny random-init Hugging Face MoE models (no downloads): Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE."""

from __future__ import annotations

import pytest
import torch

ARCHS = ("qwen2_moe", "qwen3_moe", "mixtral", "olmoe")


def tiny_moe(arch: str, seed: int = 0, experts: int = 8, top_k: int = 2, layers: int = 2):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, num_experts_per_tok=top_k,
                  tie_word_embeddings=False)
    if arch == "qwen2_moe":
        cfg = tr.Qwen2MoeConfig(**common, intermediate_size=64, moe_intermediate_size=16, num_experts=experts,
                                shared_expert_intermediate_size=32, norm_topk_prob=False)
        model = tr.Qwen2MoeForCausalLM(cfg)
    elif arch == "qwen3_moe":
        cfg = tr.Qwen3MoeConfig(**common, intermediate_size=64, moe_intermediate_size=16, num_experts=experts,
                                norm_topk_prob=True, head_dim=8)
        model = tr.Qwen3MoeForCausalLM(cfg)
    elif arch == "mixtral":
        cfg = tr.MixtralConfig(**common, intermediate_size=16, num_local_experts=experts)
        model = tr.MixtralForCausalLM(cfg)
    elif arch == "olmoe":
        cfg = tr.OlmoeConfig(**common, intermediate_size=16, num_experts=experts, norm_topk_prob=False)
        model = tr.OlmoeForCausalLM(cfg)
    else:
        raise ValueError(arch)
    with torch.no_grad():  # random routers (some configs start them at zero: every token would tie)
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 0.5)
    return model.eval()


def calib_ids(n: int = 4, seq_len: int = 16, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq_len), generator=g)
