"""Removal from masks: what channel / head masks zeroed becomes physical; broken groups refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import set_mask
from sparsecraft.structure import remove_masked

from .models import HF_MAKERS, TinyResNet, calib_ids


def _kill(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: list[int]) -> None:
    keep = torch.ones(conv.out_channels, dtype=torch.bool)
    keep[channels] = False
    set_mask(conv, keep[:, None, None, None].expand_as(conv.weight).clone())
    for p in ("weight", "bias"):
        set_mask(bn, keep.clone(), p)


def test_conv_bn_chain_into_conv_and_linear_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 3),
    )  # fmt: skip
    model.train()
    model(torch.randn(8, 2, 6, 6))  # non-trivial running statistics
    _kill(model[0], model[1], [1])
    _kill(model[3], model[4], [0, 4])
    model.eval()
    x = torch.randn(5, 2, 6, 6)
    before = model(x)
    change = remove_masked(model, example=x[:1])
    assert change.removed == {"0": 1, "3": 2}
    assert model[0].weight.shape == (3, 2, 3, 3) and model[1].num_features == 3
    assert model[3].weight.shape == (4, 3, 3, 3) and model[3].in_channels == 3
    assert model[7].weight.shape == (3, 16) and model[7].in_features == 16
    assert model[0].weight_mask.shape == model[0].weight.shape
    assert torch.allclose(model(x), before, atol=1e-6)


def test_live_bias_is_refused_and_a_zero_bias_is_removed() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[0] = False
    set_mask(model[0], keep)
    with torch.no_grad():
        model[0].bias.fill_(0.5)  # channel 0 outputs relu(0.5) != 0: not dead
    x = torch.randn(3, 4)
    msg = "break dependency group 0: channel 0 is masked in 0.weight but 0.bias is unmasked and non-zero"
    with pytest.raises(SparsecraftError, match=msg):
        remove_masked(model, example=x)
    assert model[0].weight.shape == (3, 4)
    with torch.no_grad():
        model[0].bias[0] = 0.0
    before = model(x)
    assert remove_masked(model, example=x).removed == {"0": 1}
    assert torch.allclose(model(x), before)


def test_a_residual_channel_masked_on_one_side_only_is_refused():
    model = TinyResNet.trained()
    # block2's output channel 3 is written by its c2 branch AND its downsample branch
    _kill(model.block2.c2, model.block2.b2, [3])
    with pytest.raises(SparsecraftError, match=r"break dependency group block2.c2: channel 3 .*block2.down"):
        remove_masked(model, example=torch.randn(1, 3, 8, 8))
    assert model.block2.c2.out_channels == 12
    _kill(model.block2.down[0], model.block2.down[1], [3])
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    assert remove_masked(model, example=x[:1]).removed == {"block2.c2": 1}
    assert torch.allclose(model(x), before, atol=1e-5)


def test_gate_without_up_breaks_the_mlp_group_and_heads_need_q_and_o():
    model = HF_MAKERS["llama"]()
    mlp = model.model.layers[0].mlp
    keep = torch.ones_like(mlp.gate_proj.weight, dtype=torch.bool)
    keep[5] = False
    set_mask(mlp.gate_proj, keep)
    msg = "masked in model.layers.0.mlp.gate_proj.weight but model.layers.0.mlp.up_proj.weight is unmasked"
    with pytest.raises(SparsecraftError, match=msg):
        remove_masked(model)
    set_mask(mlp.up_proj, keep.clone())
    att = model.model.layers[1].self_attn
    q_keep = torch.ones_like(att.q_proj.weight, dtype=torch.bool)
    q_keep[8:16] = False  # query head 1
    set_mask(att.q_proj, q_keep)
    with pytest.raises(SparsecraftError, match="head 1 of model.layers.1.self_attn"):
        remove_masked(model)
    o_keep = torch.ones_like(att.o_proj.weight, dtype=torch.bool)
    o_keep[:, 8:16] = False
    set_mask(att.o_proj, o_keep)
    ids = calib_ids(2, 10)
    before = model(ids)[0]
    with pytest.raises(SparsecraftError, match=r"leaves \[1, 2\] query heads"):  # uneven GQA groups
        remove_masked(copy.deepcopy(model))
    q_keep[24:32] = False  # and query head 3: one from each key/value group
    o_keep[:, 24:32] = False
    set_mask(att.q_proj, q_keep)
    set_mask(att.o_proj, o_keep)
    before = model(ids)[0]
    change = remove_masked(model)
    assert change.removed == {"model.layers.0.mlp.gate_proj": 1, "model.layers.1.self_attn": 2}
    assert att.q_proj.weight.shape == (16, 32) and att.num_key_value_groups == 1
    assert torch.allclose(model(ids)[0], before, atol=1e-5)


def test_mask_free_and_unstructured_masks_remove_nothing():
    model = HF_MAKERS["llama"]()
    up = model.model.layers[0].mlp.up_proj
    set_mask(up, torch.rand(up.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5)
    assert remove_masked(model).removed == {}
    assert up.weight.shape == (64, 32)
