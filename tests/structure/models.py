"""Tiny random models for the structure tests: the Hugging Face families (Llama / Mistral / Qwen2
with grouped-query attention, GPT-2, OPT, BERT) and a plain CNN with BatchNorm and residual adds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.oneshot.tiny import calib_ids, tiny_bert, tiny_gpt2, tiny_llama, tiny_opt

__all__ = ["calib_ids", "tiny_bert", "tiny_gpt2", "tiny_llama", "tiny_mistral", "tiny_opt", "tiny_qwen2",
           "TinyResNet", "HF_MAKERS"]


def tiny_mistral(seed: int = 0):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tr.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                           sliding_window=None)
    return tr.MistralForCausalLM(cfg).eval()


def tiny_qwen2(seed: int = 0):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tr.Qwen2Config(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    model = tr.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random biases so that removing a head's bias rows matters
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                lin.bias.normal_(0, 0.1)
    return model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """stem conv+BN -> two basic blocks (the second downsamples) -> pool -> flatten -> fc."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = BasicBlock(8, 8)
        self.block2 = BasicBlock(8, 12, stride=2)
        self.fc = nn.Linear(12 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        x = nn.functional.adaptive_avg_pool2d(x, 2)
        return self.fc(torch.flatten(x, 1))

    @classmethod
    def trained(cls, seed: int = 0) -> TinyResNet:
        """With non-trivial BatchNorm statistics and affine parameters, in eval mode."""
        model = cls(seed)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
            model.train()
            model(torch.randn(16, 3, 8, 8))
        return model.eval()


HF_MAKERS = {"llama": tiny_llama, "mistral": tiny_mistral, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2,
             "opt": tiny_opt, "bert": tiny_bert}
