"""sparse_attention on a tiny Llama: dense at sparsity 0, the phases touch the right forwards."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.attention import sparse_attention
from sparsecraft.errors import SparsecraftError
from tests.kv.helpers import tiny_llama

IDS = torch.randint(0, 64, (1, 48), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["topk", "quest", "vertical_slash"])
def test_sparsity_zero_is_dense(method):
    model = tiny_llama()
    with torch.no_grad():
        dense = model(IDS).logits
        with sparse_attention(model, method, sparsity=0.0, phase="prefill") as ctx:
            got = model(IDS).logits
    torch.testing.assert_close(got, dense, rtol=1e-4, atol=1e-5)
    assert ctx.realised_sparsity() == 0.0 and model.config._attn_implementation == "sdpa"


def test_phases_choose_the_forwards():
    model = tiny_llama()
    with torch.no_grad():
        dense = model.generate(IDS, max_new_tokens=4, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
        with sparse_attention(model, "topk", sparsity=0.9, phase="decode") as dec:
            d = model.generate(IDS, max_new_tokens=4, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
        with sparse_attention(model, "topk", sparsity=0.9, phase="prefill") as pre:
            p = model.generate(IDS, max_new_tokens=4, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    torch.testing.assert_close(d.logits[0], dense.logits[0], rtol=1e-4, atol=1e-5)  # prompt was dense
    assert (p.logits[0] - dense.logits[0]).abs().max() > 1e-3  # prompt was sparse
    # decode phase counted the 3 one-token steps of 2 layers x 4 heads (keys 49, 50, 51)
    assert dec.causal == 2 * 4 * (49 + 50 + 51)
    assert pre.causal == 2 * 4 * (48 * 49 // 2)  # prefill: the prompt's causal triangle only
    assert 0.8 < pre.realised_sparsity() < 0.9


def test_bad_input():
    model = tiny_llama()
    with pytest.raises(SparsecraftError, match="phase must be one of"):
        with sparse_attention(model, "topk", 0.5, phase="later"):
            pass
    with pytest.raises(SparsecraftError, match="unknown sparse attention 'dense2'"):
        with sparse_attention(model, "dense2", 0.5):
            pass
    with pytest.raises(SparsecraftError, match=r"in \[0, 1\), got 1.0"):
        with sparse_attention(model, "quest", 1.0):
            pass
    tr = pytest.importorskip("transformers")
    gpt2 = tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(SparsecraftError, match="model family 'gpt2'"):
        with sparse_attention(gpt2, "topk", 0.5):
            pass
