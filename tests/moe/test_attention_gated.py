import math

import pytest
import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.moe import SparseLM, SparseLMConfig, load_lm, save_lm
from sparsecraft.moe.attention_gated import GatedSelfAttention
from tests.moe.reference_attention import explicit_heads


@torch.no_grad()
def test_one_token_one_head_by_hand():
    # one token: attention returns v itself (position 0 is not rotated), so out = W_o (v * sigmoid(W_g x))
    m = GatedSelfAttention(2, 1)
    m.v_proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    m.o_proj.weight.copy_(torch.eye(2))
    m.gate_proj.weight.copy_(torch.tensor([[1.0, 1.0]]))
    out = m(torch.tensor([[[1.0, -1.0]]]))  # v = (1, -2), gate = sigmoid(0) = 0.5
    assert torch.allclose(out, torch.tensor([[[0.5, -1.0]]]))
    out = m(torch.tensor([[[2.0, 1.0]]]))  # v = (2, 2), gate = sigmoid(3)
    g = 1.0 / (1.0 + math.exp(-3.0))
    assert torch.allclose(out, torch.tensor([[[2 * g, 2 * g]]]), atol=1e-6)


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
def test_gated_attention_equals_an_explicit_causal_softmax_times_the_gate(gate):
    torch.manual_seed(2)
    m = GatedSelfAttention(8, 2, gate=gate)
    x = torch.randn(1, 5, 8)
    y = explicit_heads(m, x, 2)  # (1, 5, heads, head_dim)
    g = 1.0 / (1.0 + torch.exp(-(x @ m.gate_proj.weight.t())))
    g = g.view(1, 5, 2, 1) if gate == "headwise" else g.view(1, 5, 2, 4)
    assert m.gate_proj.weight.shape == ((2, 8) if gate == "headwise" else (8, 8))
    expected = (y * g).reshape(1, 5, 8) @ m.o_proj.weight.t()
    assert torch.allclose(m(x), expected, atol=1e-5)


def _cfg(**kw):
    return SparseLMConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_seq_len=32,
                          attention="gated", **kw)


def test_sparse_lm_with_gated_attention_trains_saves_loads_and_prunes(tmp_path):
    torch.manual_seed(0)
    m = SparseLM(_cfg(attention_options={"gate": "elementwise"}))
    assert isinstance(m.layers[1].attn, GatedSelfAttention) and m.layers[1].attn.gate == "elementwise"
    ids = torch.randint(0, 40, (2, 12))
    out = m(input_ids=ids, labels=ids)
    out.loss.backward()
    assert m.layers[0].attn.gate_proj.weight.grad.abs().sum() > 0
    rep = sparsecraft.prune(m, 0.5, progress=False)
    assert any("gate_proj" in row.name for row in rep.layers)
    save_lm(m, tmp_path / "g.safetensors")
    back = load_lm(tmp_path / "g.safetensors")
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, m(input_ids=ids).logits)


@pytest.mark.parametrize("options, word", [
    ({"gate": "channel"}, "gate must be one of headwise, elementwise, got 'channel'"),
    ({"gates": "headwise"}, "takes only the option gate, got \\['gates'\\]"),
])
def test_bad_gate_options_are_refused_by_validate(options, word):
    with pytest.raises(SparsecraftError, match=word):
        _cfg(attention_options=options).validate()
    with pytest.raises(SparsecraftError, match="attention 'standard' takes no options"):
        SparseLMConfig(attention_options={"gate": "headwise"}).validate()
