import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsecraft
from sparsecraft.criteria import make_criterion
from sparsecraft.errors import SparsecraftError
from sparsecraft.targets import find_targets


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2, bias=False))


def batches():
    torch.manual_seed(1)
    return [(torch.randn(5, 3), torch.randint(0, 2, (5,))) for _ in range(2)]


def summed_grad(model, data):
    model.zero_grad()
    for x, y in data:
        F.cross_entropy(model(x), y).backward()
    return model[0].weight.grad.clone()


def test_saliency_is_abs_w_times_summed_grad():
    model, data = tiny(), batches()
    g = summed_grad(model, data)
    crit = make_criterion("saliency")
    (t,) = find_targets(model)
    crit.prepare(model, [t], data=data)
    assert torch.allclose(crit.score(t), (model[0].weight.detach() * g).abs())


def test_movement_and_gradient_scores():
    model, data = tiny(), batches()
    g = summed_grad(model, data)
    (t,) = find_targets(model)
    mv, gr = make_criterion("movement"), make_criterion("gradient")
    mv.prepare(model, [t], data=data)
    gr.prepare(model, [t], data=data)
    assert torch.allclose(mv.score(t), -model[0].weight.detach() * g, atol=1e-6)
    assert torch.allclose(gr.score(t), g.abs(), atol=1e-6)


def test_gradient_criteria_need_data():
    with pytest.raises(SparsecraftError, match="needs data"):
        sparsecraft.prune(tiny(), 0.5, criterion="saliency")


def test_random_is_seeded_and_layer_independent():
    a = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    b = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    sparsecraft.prune(a, 0.5, criterion={"type": "random", "seed": 3})
    sparsecraft.prune(b, 0.5, criterion={"type": "random", "seed": 3})
    assert torch.equal(a[0].weight_mask, b[0].weight_mask)
    assert not torch.equal(a[0].weight_mask, a[1].weight_mask)


def test_magnitude_prunes_smallest():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -3.0, 0.1, 2.0]]))
    sparsecraft.prune(model, 0.5)
    assert model[0].weight.tolist() == [[0.0, -3.0, 0.0, 2.0]]
