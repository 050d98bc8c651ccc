"""report(): a weight shared by two modules is one row and counted once, masked or not."""

import torch
from torch import nn

import sparsecraft
from sparsecraft.masks import masked_params, set_mask


def _tied() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    model[2].weight = model[0].weight
    return model


def test_prune_masks_a_shared_weight_once_and_reports_it_once() -> None:
    model = _tied()
    rep = sparsecraft.prune(model, 0.5, criterion="random")
    assert [mp.name for mp in masked_params(model)] == ["0.weight"]
    assert not hasattr(model[2], "weight_mask")
    assert [layer.name for layer in rep.layers] == ["0.weight"]
    assert rep.numel == 64 and rep.nonzeros == 32 and rep.sparsity == 0.5  # 50%, not 75%
    assert rep.model_numel == 64 + 8 + 8


def test_two_masks_on_one_tensor_are_counted_once() -> None:
    model = _tied()  # e.g. masks loaded from an older checkpoint onto both holders
    set_mask(model[0], torch.arange(64).reshape(8, 8) % 2 == 0)
    set_mask(model[2], torch.ones(8, 8, dtype=torch.bool), apply=False)
    assert [mp.name for mp in masked_params(model)] == ["0.weight"]
    rep = sparsecraft.report(model)
    assert [layer.name for layer in rep.layers] == ["0.weight"] and rep.numel == 64


def test_unmasked_shared_weight_is_one_dense_row() -> None:
    rep = sparsecraft.report(_tied())
    assert [(layer.name, layer.pattern) for layer in rep.layers] == [("0.weight", "dense")]
