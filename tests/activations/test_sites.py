"""find_sites: the MLP hidden activation of every supported family is the down projection's input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecraft.activations.sites import find_sites
from sparsecraft.errors import SparsecraftError
from tests.activations.tiny import FAMILIES, inputs, make, run

NAMES = {
    "llama": "model.layers.{}.mlp.down_proj", "qwen2": "model.layers.{}.mlp.down_proj",
    "mistral": "model.layers.{}.mlp.down_proj", "gpt2": "transformer.h.{}.mlp.c_proj",
    "opt": "model.decoder.layers.{}.fc2", "bert": "encoder.layer.{}.output.dense",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sites_and_names(family):
    model = make(family)
    sites = find_sites(model)
    if family == "sequential":
        assert [s.name for s in sites] == ["3", "5"]
        assert [s.act_attr for s in sites] == ["1", "4"]
    else:
        assert [s.name for s in sites] == [NAMES[family].format(i) for i in range(2)]
        assert all(s.gated == (family in ("llama", "qwen2", "mistral")) for s in sites)
    for s in sites:
        assert dict(model.named_modules())[s.name] is s.projection


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "bert"])
def test_hidden_activation_is_the_formula(family):
    """The activation the site reads equals act(gate(x))*up(x) (gated) / act(fc(x)) (plain),
    recomputed here from the block's own submodules on the same MLP input."""
    model = make(family)
    site = find_sites(model)[0]
    seen, mlp_in = {}, {}
    site.projection.register_forward_pre_hook(lambda m, a: seen.setdefault("a", a[0].detach()))
    if family == "llama":
        mlp = model.model.layers[0].mlp
        mlp.register_forward_pre_hook(lambda m, a: mlp_in.setdefault("x", a[0].detach()))
        run(model, family, inputs(family))
        ref = torch.nn.functional.silu(mlp.gate_proj(mlp_in["x"])) * mlp.up_proj(mlp_in["x"])
    elif family == "gpt2":
        mlp = model.transformer.h[0].mlp
        mlp.register_forward_pre_hook(lambda m, a: mlp_in.setdefault("x", a[0].detach()))
        run(model, family, inputs(family))
        ref = mlp.act(mlp.c_fc(mlp_in["x"]))
    elif family == "opt":
        layer = model.model.decoder.layers[0]
        layer.fc1.register_forward_pre_hook(lambda m, a: mlp_in.setdefault("x", a[0].detach()))
        run(model, family, inputs(family))
        ref = torch.relu(layer.fc1(mlp_in["x"]))
    else:
        inter = model.encoder.layer[0].intermediate
        inter.register_forward_pre_hook(lambda m, a: mlp_in.setdefault("x", a[0].detach()))
        run(model, family, inputs(family))
        ref = torch.nn.functional.gelu(inter.dense(mlp_in["x"]))
    torch.testing.assert_close(seen["a"].reshape(ref.shape), ref)


def test_down_weight_is_out_by_hidden_for_conv1d_and_linear():
    gpt2 = find_sites(make("gpt2"))[0]
    assert tuple(gpt2.down_weight().shape) == (32, 128)
    torch.testing.assert_close(gpt2.down_weight(), gpt2.projection.weight.t())
    llama = find_sites(make("llama"))[0]
    assert tuple(llama.down_weight().shape) == (32, 64) and llama.hidden == 64


def test_unsupported_model_is_one_line_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 3, 1)

    with pytest.raises(SparsecraftError, match="unsupported model family Odd") as e:
        find_sites(Odd())
    assert "\n" not in str(e.value)
    with pytest.raises(SparsecraftError, match="no activation module followed by an nn.Linear"):
        find_sites(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)))
