"""Tiny random Hugging Face models (no downloads) for the one-shot tests."""

from __future__ import annotations

import pytest
import torch


def tiny_llama(seed: int = 0, layers: int = 2):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tr.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    return tr.LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tr.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return tr.GPT2LMHeadModel(cfg).eval()


def tiny_opt(seed: int = 0):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tr.OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32)
    return tr.OPTForCausalLM(cfg).eval()


def tiny_bert(seed: int = 0):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tr.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return tr.BertModel(cfg, add_pooling_layer=False).eval()


def calib_ids(n: int = 4, seq_len: int = 16, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq_len), generator=g)
