"""The sparsecraft_kv attention: the per-(query, key) version choice, checked by a brute-force loop,
and plain SDPA for every other cache."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.kv import SparseKVCache
from sparsecraft.kv.attention import ATTN_NAME, additive_mask, exact_attention
from tests.kv.helpers import tiny_llama, topk_prune


@pytest.mark.parametrize("chunk", [256, 3])  # 3: early chunks see only part of the keys (skipped)
@pytest.mark.parametrize(("n_q", "c0"), [(9, 6), (23, 0)])  # decode-like forward, full prefill
def test_exact_attention_equals_a_brute_force_loop(monkeypatch, chunk, n_q, c0):
    monkeypatch.setattr("sparsecraft.kv.attention.QUERY_CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    b, hq, hkv, d, total, window = 1, 4, 2, 16, 23, 5
    c1 = total - window
    k, v = torch.randn(2, b, hkv, total, d, generator=g)
    kp, vp = topk_prune(k, 10), topk_prune(v, 10)
    q = torch.randn(b, hq, n_q, d, generator=g)
    mask = additive_mask(None, n_q, total, b, q.device)
    out = exact_attention(q, kp[:, :, :c1], vp[:, :, :c1], k[:, :, c0:], v[:, :, c0:], c0, window, mask, 0.3)
    ref = torch.zeros(b, n_q, hq, d)
    for h in range(hq):
        kh = h // 2
        for i in range(n_q):
            t = total - n_q + i
            keys = [k[0, kh, j] if t - j < window else kp[0, kh, j] for j in range(t + 1)]
            vals = [v[0, kh, j] if t - j < window else vp[0, kh, j] for j in range(t + 1)]
            w = torch.softmax(torch.stack([0.3 * q[0, h, i] @ kj for kj in keys]), 0)
            ref[0, i, h] = sum(wj * vj for wj, vj in zip(w, vals))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_additive_mask_from_bool_and_causal():
    causal = additive_mask(None, 2, 4, 1, torch.device("cpu"))
    inf = float("-inf")
    assert causal[0, 0].tolist() == [[0, 0, 0, inf], [0, 0, 0, 0]]
    allowed = torch.tensor([[[[True, False, True]]]])
    assert additive_mask(allowed, 1, 3, 1, torch.device("cpu")).tolist() == [[[[0, inf, 0]]]]


def test_switched_model_is_sdpa_for_other_caches():
    model = tiny_llama()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        SparseKVCache(0.5, 4, model=model)
        assert model.config._attn_implementation == ATTN_NAME
        after = model(ids).logits
        gen = model.generate(ids, max_new_tokens=5, do_sample=False)
        model.set_attn_implementation("sdpa")
        gen_sdpa = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(before, after) and torch.equal(gen, gen_sdpa)
