"""Gated attention: the gate multiplies the SDPA output before o_proj, per head or per element,
computed from the block's normed input."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsecraft.attention.gated import add_gates, small_llama
from sparsecraft.errors import SparsecraftError


def _pair(gate="headwise"):
    dense = small_llama(vocab_size=50, hidden_size=32, layers=1, heads=2, seed=0)
    gated = add_gates(copy.deepcopy(dense), gate)
    return dense, gated


def test_zero_gate_weights_halve_every_head():
    dense, gated = _pair()
    attn = gated.model.layers[0].self_attn
    torch.nn.init.zeros_(attn.gate_proj.weight)  # sigmoid(0) = 0.5 for every head and token
    with torch.no_grad():
        dense.model.layers[0].self_attn.o_proj.weight.mul_(0.5)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(gated(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)


def test_a_closed_head_is_removed():
    dense, gated = _pair()
    attn = gated.model.layers[0].self_attn
    with torch.no_grad():
        attn.gate_proj.weight.zero_()
        attn.gate_proj.weight[0, 0], attn.gate_proj.weight[1, 0] = 1e4, -1e4  # read feature 0 of the normed input
        o = dense.model.layers[0].self_attn.o_proj.weight
        o[:, 16:] = 0  # head 1 (columns 16..31) closed
        x = torch.randn(1, 5, 32)
        x[..., 0] = 1.0  # the normed feature 0 stays positive -> gate head 0 = 1, head 1 = 0
        emb = torch.nn.Embedding(50, 32)
        ids = torch.arange(5).view(1, 5)
        emb.weight[:5] = x[0]
        dense.model.embed_tokens.weight.copy_(emb.weight)
        gated.model.embed_tokens.weight.copy_(emb.weight)
        torch.testing.assert_close(gated(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-4)
    assert attn.last_gate.shape == (1, 5, 2, 1)
    assert attn.last_gate[..., 0, 0].min() > 0.999 and attn.last_gate[..., 1, 0].max() < 1e-3


def test_gate_reads_the_normed_block_input():
    _, gated = _pair("elementwise")
    layer = gated.model.layers[0]
    seen = {}
    layer.input_layernorm.register_forward_hook(lambda m, i, o: seen.setdefault("normed", o))
    ids = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gated(ids)
        expected = torch.sigmoid(layer.self_attn.gate_proj(seen["normed"])).view(1, 6, 2, 16)
    assert layer.self_attn.gate_proj.out_features == 32
    torch.testing.assert_close(layer.self_attn.last_gate, expected)


def test_gated_model_trains_and_generates():
    model = small_llama(vocab_size=40, hidden_size=32, layers=2, heads=4, gate="headwise", seed=1)
    ids = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(0))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert model.model.layers[1].self_attn.gate_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        out = model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_bad_input():
    with pytest.raises(SparsecraftError, match="gate must be one of headwise, elementwise or None, got 'per-token'"):
        small_llama(vocab_size=10, gate="per-token")
    with pytest.raises(SparsecraftError, match="multiple of heads"):
        small_llama(vocab_size=10, hidden_size=30, heads=4)
    tr = pytest.importorskip("transformers")
    gpt2 = tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(SparsecraftError, match="Llama models, got model family 'gpt2'"):
        add_gates(gpt2)
