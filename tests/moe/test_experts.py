import pytest
import torch
import torch.nn.functional as F

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.experts import FusedExperts, GroupedSwiGLU, sort_by_expert


def reference(hidden, idx, weights, w1, w2):
    """sum_j w_tj * down_e(silu(gate_e x_t) * up_e x_t), gate rows first in gate_up_proj."""
    d = w2.shape[2]
    out = []
    for t in range(hidden.shape[0]):
        acc = 0
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            g = w1[e][:d] @ hidden[t]
            u = w1[e][d:] @ hidden[t]
            acc = acc + weights[t, j] * (w2[e] @ (F.silu(g) * u))
        out.append(acc)
    return torch.stack(out)


def test_sort_by_expert_by_hand():
    order, token, counts = sort_by_expert(torch.tensor([[1], [0], [1]]), 3)
    assert order.tolist() == [1, 0, 2] and token.tolist() == [1, 0, 2] and counts == [1, 2, 0]
    order, token, counts = sort_by_expert(torch.tensor([[2, 0], [0, 1]]), 3)
    assert order.tolist() == [1, 2, 3, 0] and token.tolist() == [0, 1, 1, 0] and counts == [2, 1, 1]


@pytest.mark.parametrize("k", [1, 2])
def test_forward_and_gradients_equal_a_token_by_token_reference(k):
    torch.manual_seed(0)
    ex = FusedExperts(4, 6, 5).double()
    hidden = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 1], [1, 0], [0, 2], [2, 1], [1, 0], [0, 1], [1, 2]])[:, :k]  # expert 3 unused
    weights = torch.rand(7, k, dtype=torch.float64, requires_grad=True)
    y = ex(hidden, idx, weights)
    w1 = ex.gate_up_proj.detach().clone().requires_grad_(True)
    w2 = ex.down_proj.detach().clone().requires_grad_(True)
    h2 = hidden.detach().clone().requires_grad_(True)
    wt2 = weights.detach().clone().requires_grad_(True)
    ref = reference(h2, idx, wt2, w1, w2)
    assert torch.allclose(y, ref, atol=1e-12)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (ref * g).sum().backward()
    assert torch.allclose(hidden.grad, h2.grad, atol=1e-12)
    assert torch.allclose(weights.grad, wt2.grad, atol=1e-12)
    assert torch.allclose(ex.gate_up_proj.grad, w1.grad, atol=1e-12)
    assert torch.allclose(ex.down_proj.grad, w2.grad, atol=1e-12)
    assert ex.gate_up_proj.grad[3].abs().sum() == 0 and ex.down_proj.grad[3].abs().sum() == 0


def test_grouped_swiglu_passes_gradcheck():
    torch.manual_seed(1)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 3, 2, dtype=torch.float64, requires_grad=True)
    r = torch.rand(6, dtype=torch.float64, requires_grad=True)
    token = torch.tensor([0, 3, 1, 2, 3, 4])  # token 3 twice (top-2)
    assert torch.autograd.gradcheck(lambda a, b, c, d: GroupedSwiGLU.apply(a, b, c, d, token, [2, 0, 4]),
                                    (x, w1, w2, r))


def test_expert_forward_matches_the_fused_path():
    torch.manual_seed(2)
    ex = FusedExperts(3, 4, 6)
    x = torch.randn(5, 4)
    y = ex(x, torch.full((5, 1), 2), torch.ones(5, 1))
    assert torch.allclose(y, ex.expert_forward(2, x), atol=1e-6)


@pytest.mark.parametrize("args, word", [((0, 4, 4), "n_experts"), ((2, 4, 0), "expert_dim")])
def test_bad_shapes_are_one_line_errors(args, word):
    with pytest.raises(SparsecraftError, match=word):
        FusedExperts(*args)
