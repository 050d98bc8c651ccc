"""kv_kernels.cpp: kv_pack equals the torch packing; kv_decode_attention equals dense attention
over the pruned cache (written here with plain softmax, from vectors pruned by torch.topk)."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.kv.tiles import n_tiles, pack


def _ops():
    from sparsecraft.kernels.extension import ops

    return ops()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,keep", [(64, 20), (64, 64), (32, 7), (128, 39), (96, 1)])
def test_kv_pack_matches_torch_pack(native_ok, dtype, d, keep):
    g = torch.Generator().manual_seed(d + keep)
    x = torch.randint(-4, 5, (2, 3, 9, d), generator=g).to(dtype)  # many ties: the lower index wins
    cap, off = 14, 3
    bits = torch.full((2, 3, cap, n_tiles(d)), 7, dtype=torch.int64)
    vals = torch.full((2, 3, cap, keep), 9.0, dtype=dtype)
    _ops().kv_pack(x, keep, bits, vals, off)
    rb, rv = pack(x, keep)
    assert torch.equal(bits[:, :, off : off + 9], rb)
    assert torch.equal(vals[:, :, off : off + 9], rv)
    assert (bits[:, :, :off] == 7).all() and (bits[:, :, off + 9 :] == 7).all()  # nothing else written


def _distinct(g, *shape):
    """Values with distinct magnitudes in every vector (no ties for topk), exact in fp16:
    a random permutation of 1..D, divided by D, random signs."""
    d = shape[-1]
    mags = torch.argsort(torch.rand(*shape, generator=g), dim=-1).float() + 1
    signs = torch.randint(0, 2, shape, generator=g).float() * 2 - 1
    return mags / d * signs


def _topk_prune(x, keep):
    idx = x.abs().topk(keep, dim=-1).indices
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))


def _dense_attention(q, k, v, mask, scale):
    """q [B, Hq, D]; k, v [B, Hkv, T, D]; mask [B, T] additive."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = torch.einsum("bhd,bhtd->bht", q.double(), k.double()) * scale + mask.double()[:, None]
    return torch.einsum("bht,bhtd->bhd", torch.softmax(s, -1), v.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_comp,w,d,keep,hq,hkv", [(300, 17, 64, 20, 9, 3), (5, 0, 64, 7, 2, 2),
                                                      (0, 6, 32, 10, 4, 1), (129, 128, 128, 40, 4, 2),
                                                      (40, 9, 48, 11, 4, 2)])  # 48: the generic path
def test_kv_decode_attention_equals_dense_over_pruned(native_ok, dtype, n_comp, w, d, keep, hq, hkv):
    g = torch.Generator().manual_seed(n_comp + w)
    b = 2
    k_old, v_old = _distinct(g, 2, b, hkv, n_comp, d).to(dtype)
    k_win, v_win = torch.randn(2, b, hkv, w, d, generator=g).to(dtype)
    q = torch.randn(b, hq, d, generator=g)
    mask = torch.zeros(b, n_comp + w)
    mask[1, ::3] = float("-inf")  # a padded row: every third token masked
    cap = n_comp + 5
    bits = {n: torch.zeros(b, hkv, cap, n_tiles(d), dtype=torch.int64) for n in "kv"}
    vals = {n: torch.zeros(b, hkv, cap, keep, dtype=dtype) for n in "kv"}
    _ops().kv_pack(k_old, keep, bits["k"], vals["k"], 0)
    _ops().kv_pack(v_old, keep, bits["v"], vals["v"], 0)
    out = _ops().kv_decode_attention(q, bits["k"], vals["k"], bits["v"], vals["v"], n_comp, k_win, v_win,
                                     mask, 0.125)
    k_all = torch.cat([_topk_prune(k_old.float(), keep), k_win.float()], 2)
    v_all = torch.cat([_topk_prune(v_old.float(), keep), v_win.float()], 2)
    ref = _dense_attention(q, k_all, v_all, mask, 0.125)
    assert out.shape == (b, hq, d)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-6)
    none = _ops().kv_decode_attention(q, bits["k"], vals["k"], bits["v"], vals["v"], n_comp, k_win, v_win,
                                      None, 0.125)
    torch.testing.assert_close(none.double(), _dense_attention(q, k_all, v_all, torch.zeros_like(mask), 0.125),
                               rtol=1e-5, atol=2e-6)


def test_kv_decode_attention_rejects_bad_shapes(native_ok):
    q = torch.randn(1, 3, 64)
    bits = torch.zeros(1, 2, 4, 1, dtype=torch.int64)
    vals = torch.zeros(1, 2, 4, 20)
    win = torch.zeros(1, 2, 1, 64)
    with pytest.raises(RuntimeError, match="multiple of KV heads"):
        _ops().kv_decode_attention(q, bits, vals, bits, vals, 4, win, win, None, 1.0)
    with pytest.raises(RuntimeError, match="capacity"):
        _ops().kv_decode_attention(torch.randn(1, 2, 64), bits, vals, bits, vals, 5, win, win, None, 1.0)
