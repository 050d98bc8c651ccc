"""prune_structure: scores per structure from the criteria axis (checked by hand), allocation, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.structure import count_params, prune_structure

from .models import HF_MAKERS, calib_ids


def _mlp() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 3, 0], [0, 0, 0.5], [2, 0, 0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 2, 0.5]]))
        model[2].bias.zero_()
    return model


def test_magnitude_is_the_l2_norm_of_every_weight_of_the_channel():
    # channel c owns row c of layer 0 and column c of layer 2:
    # ||.||_2 = sqrt(1 + 1) = 1.41, sqrt(9 + 0) = 3, sqrt(0.25 + 4) = 2.06, sqrt(4 + 0.25) = 2.06
    model = _mlp()
    rep = prune_structure(model, 0.25, kind="channels", example=torch.zeros(1, 3))
    assert rep.removed == {"0": 1}
    assert model[0].weight[:, 0].tolist() == [0.0, 0.0, 2.0]  # channel 0 (1.41) went; rows 1, 2, 3 stay
    assert model[2].weight.tolist() == [[0.0, 0.0, 0.0], [0.0, 2.0, 0.5]]


def test_wanda_weighs_each_weight_by_its_input_norm():
    # inputs x = (1, 0.1, 2) twice: ||X|| = (sqrt2, 0.1 sqrt2, 2 sqrt2); hidden relu(W0 x) = (1, 0.3, 1, 2)
    # per channel sqrt(sum (|W| ||X||)^2): c0 sqrt(2 + 2*1) = 2, c1 sqrt(2 (0.3)^2 + 0) = 0.42,
    # c2 sqrt(2 (0.5*2)^2 + 2*(2*1)^2) = sqrt(10) = 3.16, c3 sqrt(2 (2)^2 + 2 (0.5*2)^2) = sqrt(10)
    model = _mlp()
    x = torch.tensor([[1.0, 0.1, 2.0], [1.0, 0.1, 2.0]])
    rep = prune_structure(model, 0.25, kind="channels", criterion="wanda", calib=[(x, None)], example=x)
    assert rep.removed == {"0": 1}
    assert model[0].weight.tolist() == [[1.0, 0, 0], [0, 0, 0.5], [2, 0, 0]]  # channel 1 went


def test_taylor_sums_abs_gradient_times_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    ref = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    ref.load_state_dict(model.state_dict())
    nn.functional.cross_entropy(ref(x), y).backward()
    score = ((ref[0].weight * ref[0].weight.grad).abs().sum(1) + (ref[2].weight * ref[2].weight.grad).abs().sum(0))
    worst = set(torch.argsort(score)[:3].tolist())
    prune_structure(model, 0.5, kind="channels", criterion="taylor", calib=[(x, y)], example=x)
    kept_rows = {tuple(r) for r in model[0].weight.detach().tolist()}
    assert kept_rows == {tuple(ref[0].weight[c].tolist()) for c in range(6) if c not in worst}


def test_uniform_and_global_channel_counts():
    model = HF_MAKERS["llama"]()
    before = count_params(model)
    rep = prune_structure(model, 0.25, kind="channels")
    assert all(model.model.layers[i].mlp.down_proj.in_features == 48 for i in range(2))
    assert rep.params_before == before and rep.params_after == before - 2 * 16 * 3 * 32
    assert rep.native_config is True and model.config.intermediate_size == 48
    model = HF_MAKERS["llama"]()
    with torch.no_grad():  # layer 1's MLP is 10x smaller: global ranking takes its channels first
        for p in model.model.layers[1].mlp.parameters():
            p.mul_(0.1)
    rep = prune_structure(model, 0.25, kind="channels", distribution="global")
    assert sum(rep.removed.values()) == 32
    assert rep.removed["model.layers.1.mlp.gate_proj"] == 32 and rep.native_config is False


def test_heads_query_mode_kv_mode_and_global():
    model = HF_MAKERS["qwen2"]()  # 6 query heads, 2 key/value groups of 3, 3 layers
    rep = prune_structure(model, 0.34, kind="heads")  # round(0.34 * 3) = 1 query head from every group
    att = model.model.layers[0].self_attn
    assert att.q_proj.out_features == 32 and att.k_proj.out_features == 16 and att.num_key_value_groups == 2
    assert rep.removed == {f"model.layers.{i}.self_attn": 2 for i in range(3)} and rep.native_config is True
    model = HF_MAKERS["qwen2"]()
    prune_structure(model, 0.5, kind="heads", head_mode="kv")  # one of the two groups, with its 3 query heads
    att = model.model.layers[2].self_attn
    assert att.q_proj.out_features == 24 and att.k_proj.out_features == 8 and att.num_key_value_groups == 3
    model = HF_MAKERS["qwen2"]()
    rep = prune_structure(model, 0.25, kind="heads", distribution="global")  # 4.5 of 18 query heads: 2 units of 2
    assert sum(rep.removed.values()) == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 1.0}, r"ratio must be a number in \[0, 1\)"),
    ({"ratio": 0.995}, "would remove all 64 channels of model.layers.0.mlp.gate_proj"),
    ({"ratio": 0.5, "kind": "rows"}, "unknown structure kind 'rows'"),
    ({"ratio": 0.5, "distribution": "erk"}, "'uniform' or 'global'"),
    ({"ratio": 0.5, "targets": ["nothing"]}, "no removable channel group matches"),
    ({"ratio": 0.9, "kind": "heads", "head_mode": "kv"}, "would remove all 2 head units"),
    ({"ratio": 0.5, "kind": "blocks"}, "calibration data"),
    ({"ratio": 0.0, "kind": "blocks", "blocks": 2}, "would leave none"),
    ({"ratio": 0.5, "criterion": "wanda"}, "needs calibration data"),
])
def test_bad_requests_are_one_line_errors_and_change_nothing(kwargs, message):
    model = HF_MAKERS["llama"]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ratio = kwargs.pop("ratio")
    with pytest.raises(SparsecraftError, match=message) as e:
        prune_structure(model, ratio, **kwargs)
    assert "\n" not in str(e.value)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_report_text_and_dict():
    model = HF_MAKERS["gpt2"]()
    rep = prune_structure(model, 0.5, kind="heads")
    text = str(rep)
    assert "heads removal, ratio 0.5" in text and "load with sparsecraft.structure.load_pretrained" in text
    d = rep.to_dict()
    assert math.isclose(d["param_reduction"], 1 - d["params_after"] / d["params_before"])
    assert d["shapes"]["transformer.h.0.attn.c_attn.weight"] == [[32, 96], [32, 48]]


def test_blocks_by_block_influence():
    model = HF_MAKERS["qwen2"]()
    rep = prune_structure(model, 0.0, kind="blocks", blocks=1, calib=calib_ids(4, 16))
    assert len(rep.block_scores) == 3 and len(model.model.layers) == 2
    assert rep.blocks_removed == [min(range(3), key=lambda i: rep.block_scores[i])]
    assert model.config.num_hidden_layers == 2 and len(model.config.layer_types) == 2
