import pytest
import torch
import torch.nn.functional as F

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.ffn import FFN, SwiGLU, check_positive


def test_swiglu_formula():
    torch.manual_seed(0)
    m = SwiGLU(4, 6)
    x = torch.randn(3, 4)
    want = (F.silu(x @ m.gate_proj.weight.t()) * (x @ m.up_proj.weight.t())) @ m.down_proj.weight.t()
    assert torch.allclose(m(x), want, atol=1e-6)


def test_registry_names_the_three_blocks():
    assert FFN.names() == ["dense", "moe", "stem"]
    with pytest.raises(SparsecraftError, match="unknown ffn 'sparse'; allowed: dense, moe, stem"):
        FFN.get("sparse")


@pytest.mark.parametrize("value", [0, -1, 2.0, True, None])
def test_check_positive_names_the_value(value):
    with pytest.raises(SparsecraftError, match=f"width must be an integer >= 1, got {value!r}"):
        check_positive("width", value)
    assert check_positive("n", 0, allow_zero=True) == 0
