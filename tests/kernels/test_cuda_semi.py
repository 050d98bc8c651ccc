"""The CUDA 2:4 backend: skipped on CPU with the reason; on a GPU, equals nn.Linear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecraft.kernels import SparseLinear, convert, get_backend
from sparsecraft.kernels.cuda_semi import is_two_four, semi_structured_available
from tests.kernels.helpers import sparse_weight, two_four_weight

OK, WHY = semi_structured_available()


def test_two_four_check():
    assert is_two_four(two_four_weight(4, 16))
    assert not is_two_four(sparse_weight(4, 16, 0.1))
    assert not is_two_four(torch.zeros(4, 6))


def test_unavailable_reason_and_auto_skips_it():
    b = get_backend("cuda-2:4")
    assert b.available() == (OK, WHY)
    assert "CUDA" in b.supports(two_four_weight(32, 64))  # a CPU weight is never eligible
    if not OK:
        assert WHY  # a reason is given
        model = nn.Sequential(nn.Linear(64, 32))
        with torch.no_grad():
            model[0].weight.copy_(two_four_weight(32, 64))

        def measure(weight, batch, names):
            assert "cuda-2:4" not in names
            return {n: 1.0 for n in names}

        convert(model, measure=measure)


@pytest.mark.skipif(not OK, reason=f"CUDA 2:4 path not testable here: {WHY}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_equals_linear(dtype):
    lin = nn.Linear(128, 64, bias=True).to("cuda", dtype)
    with torch.no_grad():
        lin.weight.copy_(two_four_weight(64, 128).to("cuda", dtype))
    sl = SparseLinear.from_linear(lin, "cuda-2:4")
    x = torch.randn(2, 32, 128, device="cuda", dtype=dtype)
    torch.testing.assert_close(sl(x), lin(x), rtol=2e-2, atol=2e-2)
    assert torch.equal(sl.dense_weight(), lin.weight.detach())
