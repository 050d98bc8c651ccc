"""The embedding / LM head quantizer: round to nearest on the group grid, a tied weight once."""

from __future__ import annotations

import torch

from sparsecraft.quant.embedding import quantize_embeddings
from sparsecraft.quant.grid import QuantSpec
from sparsecraft.quant.state import get_quant, quantized_params
from tests.oneshot.tiny import tiny_llama


def test_tied_embedding_quantized_once_and_on_grid():
    m = tiny_llama()
    m.lm_head.weight = m.model.embed_tokens.weight  # tie
    before = m.model.embed_tokens.weight.detach().clone()
    done = quantize_embeddings(m, QuantSpec(4, 16, True), bits=8)
    assert done == ["model.embed_tokens.weight"]
    st = get_quant(m.model.embed_tokens)
    assert st.spec.bits == 8 and get_quant(m.lm_head) is None
    w = m.model.embed_tokens.weight.detach()
    assert m.lm_head.weight.data_ptr() == w.data_ptr()
    st.codes(w)  # exactly on the grid
    # int8 round to nearest: within one step (half a step but for the clamped top of the grid)
    step = st.scale.repeat_interleave(16, 1)
    assert ((w - before).abs() <= step + 1e-8).all()
    assert (w - before).abs().mean() < step.mean() / 3


def test_untied_head_gets_its_own_grid():
    m = tiny_llama()
    done = quantize_embeddings(m, QuantSpec(4, 16, False), bits=4)
    assert done == ["model.embed_tokens.weight", "lm_head.weight"]
    assert {n for n, *_ in quantized_params(m)} == {"model.embed_tokens", "lm_head"}
    assert torch.equal(get_quant(m.lm_head).codes(m.lm_head.weight.detach()).max() <= 15, torch.tensor(True))
