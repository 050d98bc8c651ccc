"""Prune-then-unlearn: the unlearners' update rules by hand on a one-layer model, masks kept,
metrics and gap by hand, and the experiment on separable blobs where retraining forgets exactly."""

import pytest
import torch
from torch import nn

from sparsecraft import prune
from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.machine_unlearning import gap, l1_penalty, linear_decay, unlearn, unlearning_metrics


def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(3, 2, bias=False)


def _ce_grad(w, x, y):
    """d mean CE / dW by hand: (softmax(xW^T) - onehot(y))^T x / B."""
    p = torch.softmax(x @ w.T, dim=1)
    return (p - torch.eye(w.shape[0])[y]).T @ x / len(x)


def test_linear_decay_and_l1_by_hand():
    assert linear_decay(1.0, 4) == [1.0, 0.75, 0.5, 0.25]
    m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        m[2].weight.copy_(torch.tensor([[-3.0, 1.0]]))
        m[0].bias.fill_(100.0)  # biases are not in the penalty
    assert float(l1_penalty(m).detach()) == pytest.approx(7.5)


@pytest.mark.parametrize("rule, sign, which", [("ga", +1, "forget"), ("ft", -1, "retain")])
def test_one_adam_step_moves_each_weight_by_lr_along_the_right_gradient(rule, sign, which):
    # Adam's first step is -lr * g / (|g| + eps) per weight: GA climbs the forget set's loss, FT
    # descends the retain set's
    gen = torch.Generator().manual_seed(1)
    retain = (torch.randn(4, 3, generator=gen), torch.tensor([0, 1, 1, 0]))
    forget = (torch.randn(4, 3, generator=gen), torch.tensor([1, 1, 0, 1]))
    m = _linear()
    w0 = m.weight.detach().clone()
    g = _ce_grad(w0, *(forget if which == "forget" else retain))
    unlearn(m, rule, retain, forget, steps=1, lr=0.01, batch_size=4)
    assert torch.allclose(m.weight.detach() - w0, sign * 0.01 * torch.sign(g), atol=1e-6)


def test_l1_sparse_adds_the_decayed_l1_gradient():
    # gamma huge: the first step's direction is sign(g + gamma * sign(w)) = sign(w) -> every |w| shrinks
    retain = (torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))
    m = _linear()
    w0 = m.weight.detach().clone()
    unlearn(m, "l1-sparse", retain, retain, steps=1, lr=0.01, gamma=100.0, batch_size=4)
    assert torch.allclose(m.weight.detach() - w0, -0.01 * torch.sign(w0), atol=1e-6)


def test_unlearning_keeps_the_pruned_weights_at_zero():
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    prune(m, 0.5, criterion="magnitude", progress=False)
    zero = m[0].weight.detach() == 0
    assert int(zero.sum()) == 24
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for rule in ("ga", "ft", "l1-sparse"):
        unlearn(m, rule, (x, y), (x, y), steps=3, lr=0.1, gamma=0.01)
        assert (m[0].weight.detach()[zero] == 0).all()


def test_metrics_and_gap_by_hand():
    class AlwaysOne(nn.Module):
        def forward(self, x):
            return torch.tensor([0.0, 1.0, 0.0]).expand(len(x), 3)

    y = torch.tensor([0, 0, 1, 2])
    yt = torch.tensor([0, 1, 1, 2, 2])
    met = unlearning_metrics(AlwaysOne(), (torch.zeros(4, 1), y, torch.zeros(5, 1), yt), forget_class=0)
    assert met == {"forget": 0.0, "retain": 0.5, "test": 0.5, "test-forget": 0.0}
    ref = {"forget": 0.0, "retain": 1.0, "test": 0.9, "test-forget": 0.2}
    assert gap(met, ref) == pytest.approx((0 + 0.5 + 0.4 + 0.2) / 4)


def _blobs(n, seed):
    gen = torch.Generator().manual_seed(seed)
    centres = 3 * torch.eye(3, 8)
    y = torch.arange(3).repeat(n)
    return centres[y] + 0.5 * torch.randn(len(y), 8, generator=gen), y


def test_experiment_on_blobs_retraining_forgets_and_unlearners_close_most_of_the_gap():
    x, y = _blobs(40, 0)
    xt, yt = _blobs(20, 1)
    res = EXPERIMENTS.build({"type": "machine-unlearning", "sparsities": [0.0, 0.5], "hidden": 16, "epochs": 5,
                             "unlearn_lrs": [1e-2], "ft_steps": [20], "ga_steps": [3], "data": (x, y, xt, yt),
                             "lr": 1e-2}).run()
    for e in res.data["results"]:
        ref, orig = e["retrain"], e["original"]
        assert ref["forget"] == 0.0 and ref["test-forget"] == 0.0 and ref["retain"] > 0.95
        assert orig["forget"] > 0.9  # the trained model knows the class
        for rule in ("ft", "ga", "l1-sparse"):
            assert e["unlearned"][(rule, 1e-2, 20 if rule != "ga" else 3)]["gap"] < gap(orig, ref)
    assert len(res.tables[1].rows) == 3 and "gap at 50%" in res.tables[1].columns


@pytest.mark.parametrize("spec, match", [({"unlearners": ["retrain"]}, "unknown unlearner"),
                                         ({"sparsities": [1.0]}, "sparsity"), ({"forget_class": 10}, "forget_class"),
                                         ({"ft_steps": []}, "at least one value")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "machine-unlearning", **spec})
