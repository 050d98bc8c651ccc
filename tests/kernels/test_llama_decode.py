"""The C++ decode path: greedy tokens equal transformers' generate on the same (float, masked,
quantized) model, the logits agree to float rounding, and the errors are one line."""

from __future__ import annotations

import pytest
import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.kernels.llama_decode import LlamaDecodePath
from tests.oneshot.tiny import calib_ids, tiny_gpt2, tiny_llama

PROMPT = [3, 17, 5, 9, 22]


@torch.no_grad()
def _hf_greedy(m, ids, n):
    """Greedy through transformers with its KV cache (no min-length EOS suppression)."""
    out = m(torch.tensor([ids]), use_cache=True)
    cache, seq = out.past_key_values, []
    for _ in range(n):
        seq.append(int(out.logits[0, -1].argmax()))
        out = m(torch.tensor([[seq[-1]]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
    return seq


def _tied(seed=0):
    m = tiny_llama(seed=seed, layers=3)
    m.config.tie_word_embeddings = True
    m.lm_head.weight = m.model.embed_tokens.weight
    return m


CASES = {
    "fp32": None,
    "sparse50": dict(method="sparsegpt"),
    "w4s50+e8": dict(method="sparsegpt", quantize={"bits": 4, "group": 16, "embedding": 8}),
    "w8-asym": dict(method="gptq", quantize={"bits": 8, "group": 32, "sym": False}),
    "gqsa+e4": dict(method="gqsa", group=8, quantize={"bits": 4, "group": 16, "embedding": 4}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kernels", ["dense", "sparse", "auto"])
def test_greedy_tokens_equal_transformers(native_ok, case, kernels):
    m = _tied()
    kw = CASES[case]
    if kw:
        sparsecraft.prune(m, 0.0 if kw["method"] == "gptq" else 0.5, calib=calib_ids(8, 16), progress=False, **kw)
    path = LlamaDecodePath.from_model(m, kernels=kernels, max_positions=64, threads=2)
    res = path.generate(PROMPT, 24)
    assert res.tokens == _hf_greedy(m, PROMPT, 24)
    assert res.decode_steps == 23 and res.tokens_per_s > 0
    path.decoder.reset()
    for t in PROMPT:
        path.decoder.step(t)
    ref = m(torch.tensor([PROMPT])).logits[0, -1]
    assert (path.decoder.logits() - ref).abs().max() < 1e-4
    layouts = {c.layout for c in path.choices}
    if kernels == "sparse" and case in ("w4s50+e8", "gqsa+e4"):
        assert any(lay.startswith("q4-") and not lay.endswith("dense") for lay in layouts)
    if kernels == "dense":
        assert all(lay.endswith("dense") for lay in layouts)


def test_untied_head_and_cache_limit(native_ok):
    m = tiny_llama(layers=2)
    path = LlamaDecodePath.from_model(m, max_positions=8, threads=1)
    assert path.generate(PROMPT, 3).tokens == _hf_greedy(m, PROMPT, 3)
    with pytest.raises(RuntimeError, match="KV cache is full"):
        path.generate(PROMPT, 8)


def test_errors(native_ok):
    with pytest.raises(SparsecraftError, match="Llama-style causal LMs"):
        LlamaDecodePath.from_model(tiny_gpt2())
    with pytest.raises(SparsecraftError, match="kernels must be one of"):
        LlamaDecodePath.from_model(tiny_llama(), kernels="fast")
    path = LlamaDecodePath.from_model(tiny_llama(), max_positions=16)
    with pytest.raises(SparsecraftError, match="max_new_tokens must be >= 1"):
        path.generate(PROMPT, 0)
