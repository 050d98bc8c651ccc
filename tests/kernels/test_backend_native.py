"""Property tests of the C++ kernels' packings and products (hypothesis: shapes, sparsity, batch)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsecraft.kernels import get_backend


def _weight(out: int, inp: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    return w * (torch.rand(out, inp, generator=g) < density)


@given(
    out=st.integers(1, 40),
    inp=st.integers(1, 200),
    density=st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]),
    batch=st.sampled_from([1, 2, 9, 16, 33]),
    seed=st.integers(0, 10_000),
    name=st.sampled_from(["csr16", "bitmap", "torch-csr"]),
)
def test_unstructured_round_trip_and_product(native_ok, out, inp, density, batch, seed, name):
    w = _weight(out, inp, density, seed)
    b = get_backend(name)
    packed = b.pack(w)
    assert torch.equal(b.to_dense(packed, (out, inp)), w)
    x = torch.randn(batch, inp, generator=torch.Generator().manual_seed(seed + 1))
    torch.testing.assert_close(b.matmul(packed, x, out), x @ w.t(), rtol=1e-4, atol=1e-4)


@given(
    out=st.integers(1, 24),
    blocks=st.integers(1, 4),
    batch=st.sampled_from([1, 3, 8, 13]),
    seed=st.integers(0, 10_000),
)
def test_nm24_round_trip_and_product(native_ok, out, blocks, batch, seed):
    inp = 32 * blocks
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp // 4, 4, generator=g)
    keep_n = torch.randint(0, 3, (out, inp // 4, 1), generator=g)  # 0, 1 or 2 kept per group
    rank = torch.rand(out, inp // 4, 4, generator=g).argsort(-1).argsort(-1)
    w = (w * (rank < keep_n)).reshape(out, inp)
    b = get_backend("nm24")
    assert b.supports(w) is None
    packed = b.pack(w)
    assert b.nbytes(packed) == out * inp // 2 * 4 + out * inp // 32 * 4  # 2.125 bytes per weight
    assert torch.equal(b.to_dense(packed, (out, inp)), w)
    x = torch.randn(batch, inp, generator=torch.Generator().manual_seed(seed + 1))
    torch.testing.assert_close(b.matmul(packed, x, out), x @ w.t(), rtol=1e-4, atol=1e-4)


def test_byte_sizes_match_formulas(native_ok):
    w = _weight(64, 128, 0.25, 0)
    nnz = int((w != 0).sum())
    assert get_backend("csr16").nbytes(get_backend("csr16").pack(w)) == nnz * 6 + 65 * 8
    bm = get_backend("bitmap")
    assert bm.nbytes(bm.pack(w)) == (nnz + 16) * 4 + 64 * 2 * 8 + 65 * 8
    tc = get_backend("torch-csr")
    assert tc.nbytes(tc.pack(w)) == nnz * 8 + 65 * 4


def test_batches_wider_than_a_chunk_buffer(native_ok):
    """More input rows than a pool chunk buffer holds (4096 floats): csr16 and 2:4 write y through
    torch's pool instead; the product is the same."""
    w = _weight(8, 64, 0.5, 3)
    w24 = torch.randn(8, 64) * torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(8, 16)
    x = torch.randn(4100, 64, generator=torch.Generator().manual_seed(4))
    for name, weight in (("csr16", w), ("nm24", w24)):
        b = get_backend(name)
        y = b.matmul(b.pack(weight), x, 8)
        assert y.shape == (4100, 8)
        assert torch.allclose(y, x @ weight.t(), atol=1e-4), name


def test_csr16_batch1_loops_agree_with_the_reference(native_ok):
    """Both batch-1 csr16 loops (scalar and gather, csrc/csr16_dot.h; the faster one is measured per
    machine) give the product, over row lengths that exercise the 32-wide body and the tail."""
    from sparsecraft.kernels.extension import ops

    w = _weight(37, 3000, 0.1, 7)
    w[0, :] = 0.0  # an empty row
    w[1, :70] = 1.0  # 70 nonzeros: two 32-wide steps and a tail of 6
    b = get_backend("csr16")
    packed = b.pack(w)
    x = torch.randn(1, 3000, generator=torch.Generator().manual_seed(8))
    try:
        for variant in (0, 1):
            assert ops().csr16_variant(variant) == (variant if ops().has_avx512() else 0)
            torch.testing.assert_close(b.matmul(packed, x, 37), x @ w.t(), rtol=1e-5, atol=1e-4)
    finally:
        ops().csr16_variant(-1)
