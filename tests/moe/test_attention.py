
import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.attention import CausalSelfAttention, apply_rope, rope_tables
from tests.moe.reference_attention import explicit_heads


def test_rope_dot_products_depend_only_on_the_relative_position():
    torch.manual_seed(0)
    cos, sin = rope_tables(32, 8, 10000.0)
    q, k = torch.randn(8), torch.randn(8)
    rq = lambda p: apply_rope(q, cos[p], sin[p])  # noqa: E731
    rk = lambda p: apply_rope(k, cos[p], sin[p])  # noqa: E731
    assert float(rq(5) @ rk(2)) == pytest.approx(float(rq(20) @ rk(17)), rel=1e-5)
    assert torch.allclose(rq(0), q)  # position 0 is not rotated
    assert float(rq(7).norm()) == pytest.approx(float(q.norm()), rel=1e-6)  # a rotation


def test_attention_equals_an_explicit_causal_softmax():
    torch.manual_seed(1)
    m = CausalSelfAttention(8, 2)
    x = torch.randn(1, 5, 8)
    y = explicit_heads(m, x, 2).reshape(1, 5, 8) @ m.o_proj.weight.t()
    assert torch.allclose(m(x), y, atol=1e-5)


def test_heads_must_divide_the_width_into_even_parts():
    with pytest.raises(SparsecraftError, match="d_model=10 must split into n_heads=4"):
        CausalSelfAttention(10, 4)
