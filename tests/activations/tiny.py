"""Tiny random-init models of every supported family (no downloads) for the activation tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.oneshot.tiny import calib_ids, tiny_bert, tiny_gpt2, tiny_llama, tiny_opt

__all__ = ["FAMILIES", "calib_ids", "make", "tiny_bert", "tiny_gpt2", "tiny_llama", "tiny_opt"]


def tiny_qwen2(seed: int = 0):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tr.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return tr.Qwen2ForCausalLM(cfg).eval()


def tiny_mistral(seed: int = 0):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tr.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return tr.MistralForCausalLM(cfg).eval()


def tiny_sequential(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 40), nn.GELU(), nn.Dropout(0.0), nn.Linear(40, 24), nn.SiLU(),
                         nn.Linear(24, 5)).eval()


FAMILIES = {"llama": tiny_llama, "qwen2": tiny_qwen2, "mistral": tiny_mistral, "gpt2": tiny_gpt2,
            "opt": tiny_opt, "bert": tiny_bert, "sequential": tiny_sequential}


def make(family: str, seed: int = 0):
    return FAMILIES[family](seed)


def inputs(family: str, n: int = 3, seq_len: int = 10, seed: int = 0) -> torch.Tensor:
    """Token ids for the HF families, float features for the nn.Sequential."""
    if family == "sequential":
        return torch.randn(n * seq_len, 12, generator=torch.Generator().manual_seed(seed))
    return calib_ids(n, seq_len, seed=seed)


def run(model, family: str, x: torch.Tensor) -> torch.Tensor:
    if family == "sequential":
        return model(x)
    out = model(input_ids=x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state
