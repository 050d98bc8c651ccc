import math

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.router import TopKRouter, load_balancing_loss, z_loss


def hand_router(score="softmax", normalize=False, k=2, **kw):
    r = TopKRouter(2, 3, top_k=k, score=score, normalize=normalize, **kw)
    with torch.no_grad():
        r.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    return r


def test_softmax_top2_weights_are_the_probabilities_of_the_chosen_experts():
    r = hand_router().eval()
    out = r(torch.tensor([[2.0, 1.0]]))  # logits 2, 1, -3
    z = [2.0, 1.0, -3.0]
    p = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
    assert out.indices.tolist() == [[0, 1]]
    assert out.weights[0].tolist() == pytest.approx([p[0], p[1]], rel=1e-6)
    assert out.counts.tolist() == [1, 1, 0]
    norm = hand_router(normalize=True).eval()(torch.tensor([[2.0, 1.0]]))
    assert norm.weights[0].tolist() == pytest.approx([p[0] / (p[0] + p[1]), p[1] / (p[0] + p[1])], rel=1e-6)


def test_sigmoid_scores_are_per_expert_and_top1_uses_the_largest():
    r = hand_router("sigmoid", k=1).eval()
    out = r(torch.tensor([[-1.0, 3.0]]))  # logits -1, 3, -2
    assert out.indices.tolist() == [[1]]
    assert out.weights.item() == pytest.approx(1 / (1 + math.exp(-3.0)), rel=1e-6)


def test_expert_bias_changes_the_choice_but_not_the_gate_weight():
    r = hand_router(k=1).eval()
    r.expert_bias[2] = 10.0
    out = r(torch.tensor([[2.0, 1.0]]))
    z = [2.0, 1.0, -3.0]
    assert out.indices.tolist() == [[2]]
    assert out.weights.item() == pytest.approx(math.exp(-3.0) / sum(math.exp(v) for v in z), rel=1e-6)


def test_load_balancing_loss_is_E_sum_f_p_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    counts = torch.tensor([1, 1, 0])  # top-1: token 0 -> 0, token 1 -> 1
    f = [0.5, 0.5, 0.0]
    pbar = [0.4, 0.4, 0.2]
    assert float(load_balancing_loss(probs, counts, 1)) == pytest.approx(3 * sum(a * b for a, b in zip(f, pbar)))
    # uniform probabilities give exactly 1 whatever the assignment
    assert float(load_balancing_loss(torch.full((4, 4), 0.25), torch.tensor([4, 0, 0, 0]), 1)) == pytest.approx(1.0)


def test_z_loss_is_mean_squared_logsumexp():
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    want = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 2
    assert float(z_loss(logits)) == pytest.approx(want, rel=1e-6)


def test_aux_losses_only_in_training_with_gradients_and_they_reach_the_router():
    r = hand_router(aux_loss_coef=0.1, z_loss_coef=0.01)
    x = torch.tensor([[2.0, 1.0], [0.5, -1.0]])
    r.train()
    r(x)
    logits = x @ r.weight.detach().t()
    p = logits.softmax(-1)
    top = p.topk(2, dim=-1).indices
    counts = torch.bincount(top.reshape(-1), minlength=3).float()
    lb = 3 * float((counts / 4 * p.mean(0)).sum())
    zl = float(torch.logsumexp(logits, -1).pow(2).mean())
    assert r.aux_loss.item() == pytest.approx(0.1 * lb + 0.01 * zl, rel=1e-5)
    r.aux_loss.backward()
    assert r.weight.grad is not None and r.weight.grad.abs().sum() > 0
    r.eval()
    r(x)
    assert r.aux_loss is None
    r.train()
    with torch.no_grad():
        r(x)
    assert r.aux_loss is None


def test_aux_loss_free_bias_moves_by_rate_times_sign_of_mean_minus_count():
    r = TopKRouter(2, 4, top_k=1, bias_update_rate=0.5).train()
    with torch.no_grad():
        r.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-5.0, 0.0], [0.0, -5.0]]))
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.1], [0.0, 1.0]])  # 3 tokens -> expert 0, 1 -> expert 1
    r(x)
    assert r.pending_counts.tolist() == [3, 1, 0, 0]
    r.update_bias()  # mean 1: sign(1 - c) = -1, 0, +1, +1
    assert r.expert_bias.tolist() == [-0.5, 0.0, 0.5, 0.5]
    assert r.pending_counts.tolist() == [0, 0, 0, 0]
    r.eval()
    r(x)  # no counting outside training
    assert r.pending_counts.sum() == 0


@pytest.mark.parametrize("kwargs, word", [
    ({"n_experts": 0}, "n_experts"), ({"n_experts": 4, "top_k": 5}, "top_k"), ({"n_experts": 4, "top_k": 0}, "top_k"),
    ({"n_experts": 4, "score": "relu"}, "score"), ({"n_experts": 4, "aux_loss_coef": -1.0}, "aux_loss_coef"),
    ({"n_experts": 4, "bias_update_rate": float("nan")}, "bias_update_rate"),
])
def test_bad_router_settings_are_one_line_errors_naming_the_value(kwargs, word):
    with pytest.raises(SparsecraftError, match=word) as e:
        TopKRouter(8, **kwargs)
    assert "\n" not in str(e.value)


def test_set_top_k_validates():
    r = TopKRouter(4, 3, top_k=1)
    r.set_top_k(3)
    assert r.top_k == 3
    with pytest.raises(SparsecraftError, match="top_k must be an integer in \\[1, n_experts=3\\], got 4"):
        r.set_top_k(4)
