"""act-sparse: the down projection that reads only the weight columns of nonzero inputs."""

from __future__ import annotations

import pytest
import torch

from sparsecraft.kernels import SparseLinear, get_backend
from sparsecraft.kernels.backend_activation import MAX_KERNEL_ROWS
from sparsecraft.kernels.extension import ops


def _x(n: int, h: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g)
    return x.masked_fill(torch.rand(n, h, generator=g) < sparsity, 0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 17])
@pytest.mark.parametrize("d", [1, 16, 40, 96, 577])
def test_kernel_equals_dense_product(native_ok, n, d):
    g = torch.Generator().manual_seed(n * 1000 + d)
    wt = torch.randn(70, d, generator=g)
    x = _x(n, 70, 0.6, seed=n)
    ref = x.double() @ wt.double()
    for got in (ops().act_sparse_mm(x, wt), ops().act_sparse_mm_scalar(x, wt)):
        assert got.shape == (n, d)
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_only_columns_of_nonzero_inputs_are_read(native_ok):
    # poison the rows of W^T whose input is zero in every row: a kernel that reads them returns nan
    wt = torch.randn(6, 20)
    x = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0, 3.0, 0.0]])
    poisoned = wt.clone()
    poisoned[[1, 3, 5]] = float("nan")
    want = x[:, [0, 2, 4]] @ wt[[0, 2, 4]]
    torch.testing.assert_close(ops().act_sparse_mm(x, poisoned), want)
    torch.testing.assert_close(ops().act_sparse_mm_scalar(x, poisoned), want)
    assert torch.equal(ops().act_sparse_mm(torch.zeros(3, 6), poisoned), torch.zeros(3, 20))


def test_backend_in_sparse_linear(native_ok):
    lin = torch.nn.Linear(64, 24)
    layer = SparseLinear.from_linear(lin, "act-sparse")
    assert set(dict(layer.named_buffers())) == {"packed_weight_t"}
    assert layer.nbytes == 64 * 24 * 4
    torch.testing.assert_close(layer.dense_weight(), lin.weight.detach())
    for n in (1, MAX_KERNEL_ROWS, MAX_KERNEL_ROWS + 1, 40):  # the last two: torch.mm on the copy
        x = _x(n, 64, 0.7)
        torch.testing.assert_close(layer(x), lin(x), rtol=1e-5, atol=1e-5)
    x3 = _x(6, 64, 0.5).reshape(2, 3, 64)
    torch.testing.assert_close(layer(x3), lin(x3), rtol=1e-5, atol=1e-5)
    assert get_backend("act-sparse").input_sparse


def test_bad_input_is_rejected(native_ok):
    with pytest.raises(RuntimeError, match="float32 only"):
        ops().act_sparse_mm(torch.ones(1, 3, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="x has 4 features, wt has 3 rows"):
        ops().act_sparse_mm(torch.ones(1, 4), torch.ones(3, 2))


def test_thresholded_llama_decodes_the_same_tokens_after_convert(native_ok):
    from sparsecraft.activations import cett_tables
    from sparsecraft.activations.search import apply_cett
    from sparsecraft.kernels import convert
    from tests.oneshot.tiny import calib_ids, tiny_llama

    model = tiny_llama()
    apply_cett(model, cett_tables(model, calib_ids(4, 16), batch_size=2, bits=4), 0.25)
    prompt = calib_ids(1, 5, seed=3)
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0,
              attention_mask=torch.ones_like(prompt))
    want = model.generate(prompt, **kw)
    logits = model(prompt).logits
    rep = convert(model, measure=lambda w, b, names: {n: (0.1 if n == "act-sparse" else 1.0) for n in names})
    assert [r.backend for r in rep.layers if r.input_sparsity is not None] == ["act-sparse"] * 2
    assert all(0 < r.input_sparsity < 1 for r in rep.layers if r.input_sparsity is not None)
    torch.testing.assert_close(model(prompt).logits, logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.generate(prompt, **kw), want)
