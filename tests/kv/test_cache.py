"""SparseKVCache against an independent per-token reference (tests/kv/helpers.py) on tiny Llamas."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.kv import SparseKVCache
from tests.kv.helpers import per_token_logits, reference_cache, tiny_llama

IDS = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _chunked(model, ids, cache, sizes):
    outs, i = [], 0
    for n in sizes:
        outs.append(model(ids[:, i : i + n], cache=cache).logits)
        i += n
    assert i == ids.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("sparsity,window,kernel", [(0.5, 8, "torch"), (0.5, 8, "auto"), (0.7, 0, "auto"),
                                                    (0.9, 1, "torch"), (0.3, 39, "auto")])
def test_every_chunking_equals_the_per_token_reference(native_ok, kernel, sparsity, window):
    model = tiny_llama()
    head_dim = 128 // 4
    zeros = int(sparsity * head_dim + 1e-6)
    ref = per_token_logits(model, IDS, reference_cache(zeros, window))
    for sizes in ([40], [13, 1, 1, 25], [1] * 40):
        got = _chunked(model, IDS, SparseKVCache(sparsity, window, model=model, kernel=kernel), sizes)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    dense = per_token_logits(model, IDS, reference_cache(0, window))
    assert (ref - dense).abs().max() > 1e-3  # the rule changed something: the comparison has teeth


def test_chunk_boundary_pruning_would_differ():
    """Pruning only when a chunk ends lets the tokens of a 40-token prefill see each other dense:
    that is the dense result, which the exact rule is not."""
    model = tiny_llama()
    exact = _chunked(model, IDS, SparseKVCache(0.7, 4, model=model), [40])
    with torch.no_grad():
        dense = model(IDS).logits
    assert (exact[:, 5:] - dense[:, 5:]).abs().max() > 1e-3
    torch.testing.assert_close(exact[:, :4], dense[:, :4], rtol=1e-4, atol=1e-5)  # t < 4: nothing pruned yet


def test_sparsity_zero_generates_the_dense_tokens():
    model = tiny_llama(seed=3)
    ids = IDS[:, :30]
    with torch.no_grad():
        dense = model.generate(ids, max_new_tokens=20, do_sample=False)
        sparse = model.generate(ids, max_new_tokens=20, do_sample=False,
                                cache=SparseKVCache(0.0, 8, model=model))
        with pytest.warns(FutureWarning, match="past_key_values"):  # the older keyword works too
            plain = model.generate(ids, max_new_tokens=20, do_sample=False, past_key_values=SparseKVCache(0.0, 8))
    assert torch.equal(dense, sparse) and torch.equal(dense, plain)


def test_generate_decode_matches_reference_tokens(native_ok):
    model = tiny_llama(seed=4)
    ids = IDS[:, :24]
    cache = SparseKVCache(0.7, 6, model=model)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, cache=cache)
        ref_cache = reference_cache(int(0.7 * 32), 6)
        seq = ids
        for _ in range(12):  # greedy, one token at a time through the reference
            logits = per_token_logits(model, seq, ref_cache) if seq is ids else \
                model(seq[:, -1:], cache=ref_cache).logits
            seq = torch.cat([seq, logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, seq)
    assert cache.get_seq_length() == 24 + 11  # the last generated token is not fed back


def test_plain_attention_decode_steps_match_and_long_chunks_refuse():
    model = tiny_llama()
    zeros = int(0.5 * 32)
    ref = per_token_logits(model, IDS[:, :20], reference_cache(zeros, 8))
    got = _chunked(model, IDS[:, :20], SparseKVCache(0.5, 8), [8] + [1] * 12)  # 8 fits the window
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(SparsecraftError, match="leave the 8-token window.*model=model"):
        _chunked(model, IDS[:, :20], SparseKVCache(0.5, 8), [20])


def test_padded_batch_kernel_equals_torch_path(native_ok):
    model = tiny_llama(seed=5)
    ids = torch.randint(1, 64, (2, 30), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding of row 1
    outs = {}
    for kernel in ("torch", "cpp"):
        with torch.no_grad():
            outs[kernel] = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                          output_logits=True, return_dict_in_generate=True,
                                          cache=SparseKVCache(0.7, 5, model=model, kernel=kernel))
    assert torch.equal(outs["torch"].sequences, outs["cpp"].sequences)
    for a, b in zip(outs["torch"].logits, outs["cpp"].logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_every_compressed_vector_keeps_exactly_k_and_nbytes_is_the_bound(native_ok):
    model = tiny_llama(layers=3)
    cache = SparseKVCache(0.7, 8, model=model)
    _chunked(model, IDS, cache, [40])
    k = 32 - int(0.7 * 32)
    for layer in cache.layers:
        assert layer.n_comp == 32 and layer.keys.shape[2] == 8
        for bits in (layer.kbits, layer.vbits):
            counts = sum(((bits >> s) & 1).sum(-1) for s in range(64))
            assert (counts == k).all()
    # 3 layers x 2 KV heads x (32 pruned tokens x (8 B bitmap + k * 4 B) + 8 dense x 32 x 4 B), K and V
    bound = 3 * 2 * 2 * (32 * (8 + k * 4) + 8 * 32 * 4)
    assert cache.nbytes() == bound == cache.nbytes(allocated=False)
    assert cache.dense_nbytes(4) == 3 * 2 * 2 * 40 * 32 * 4


def test_long_decode_allocates_within_two_percent():
    from sparsecraft.kv import SparseKVLayer

    layer = SparseKVLayer(0.7, 4)
    g = torch.Generator().manual_seed(3)
    for _ in range(600):
        layer.update(torch.randn(1, 2, 1, 64, generator=g), torch.randn(1, 2, 1, 64, generator=g))
        used, held = layer.nbytes(allocated=False), layer.nbytes()
        assert used <= held <= max(1.02 * used, used + 2 * 2 * 8 * (8 + 20 * 4))  # < 2% or 8 tokens
    assert layer.n_comp == 596 and layer.capacity() < 596 * 1.02


def test_fp16_storage_halves_the_bytes():
    model = tiny_llama()
    c32, c16 = SparseKVCache(0.5, 8, model=model), SparseKVCache(0.5, 8, model=model, dtype=torch.float16)
    a, b = _chunked(model, IDS, c32, [40]), _chunked(model, IDS, c16, [40])
    assert c16.layers[0].kvals.dtype == torch.float16 and c16.layers[0].keys.dtype == torch.float16
    k = 16
    assert c16.nbytes() == 2 * 2 * 2 * (32 * (8 + 2 * k) + 8 * 32 * 2)
    torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\), got 1.0"),
    ({"sparsity": -0.2}, r"got -0.2"),
    ({"window": -1}, r"window must be >= 0.*got -1"),
    ({"window": 2.5}, r"window must be an integer.*2.5"),
    ({"window": True}, r"window must be an integer"),
    ({"dtype": torch.int8}, r"dtype must be one of.*int8"),
    ({"kernel": "cuda"}, r"kernel must be one of.*'cuda'"),
])
def test_bad_arguments_are_one_line_errors(kwargs, match):
    args = {"sparsity": 0.5, "window": 4, **kwargs}
    with pytest.raises(SparsecraftError, match=match) as e:
        SparseKVCache(**args)
    assert "\n" not in str(e.value)


def test_unsupported_families_are_refused():
    tr = pytest.importorskip("transformers")
    gpt2 = tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(SparsecraftError, match="model family 'gpt2'; supported: llama"):
        SparseKVCache(0.5, 4, model=gpt2)
    mistral = tr.MistralForCausalLM(tr.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=32,
                                                     num_hidden_layers=1, num_attention_heads=4,
                                                     num_key_value_heads=2, sliding_window=16))
    with pytest.raises(SparsecraftError, match="sliding-window"):
        SparseKVCache(0.5, 4, model=mistral)


def test_crop_is_refused_and_reset_empties():
    model = tiny_llama()
    cache = SparseKVCache(0.5, 4, model=model)
    _chunked(model, IDS[:, :10], cache, [10])
    with pytest.raises(SparsecraftError, match="cannot be cropped"):
        cache.crop(-2)
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.nbytes() == 0


def test_beam_search_reorders_the_compressed_store():
    model = tiny_llama(seed=6)
    ids = IDS[:, :20]
    with torch.no_grad():
        dense = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False)
        sparse = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False,
                                cache=SparseKVCache(0.0, 4, model=model))  # tokens leave the window: store used
    assert torch.equal(dense, sparse)
