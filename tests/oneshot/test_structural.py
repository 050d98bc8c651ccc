"""sparsecraft.prune with structure-removing methods: the report shows the new shapes."""

from __future__ import annotations

import pytest
import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError
from sparsecraft.oneshot.base import ONESHOT

from .tiny import calib_ids, tiny_gpt2, tiny_llama


def test_structural_methods_are_registered():
    for name in ("slicegpt", "channels", "heads", "depth"):
        assert getattr(ONESHOT.get(name), "structural", False)
    assert not getattr(ONESHOT.get("sparsegpt"), "structural", False)


def test_channels_report_lists_new_shapes_and_parameter_counts():
    model = tiny_llama()
    rep = sparsecraft.prune(model, 0.25, method="channels", criterion="wanda", calib=calib_ids(4), progress=False)
    st = rep.info["structure"]
    assert rep.info["method"] == "channels" and rep.info["criterion"] == "wanda" and rep.info["pattern"] == "structured"
    assert st["params_before"] - st["params_after"] == 2 * 16 * 3 * 32
    assert st["param_reduction"] == pytest.approx(1 - st["params_after"] / st["params_before"])
    assert st["removed"] == {"model.layers.0.mlp.gate_proj": 16, "model.layers.1.mlp.gate_proj": 16}
    assert rep.layer("model.layers.0.mlp.down_proj.weight").shape == (32, 48)
    assert rep.sparsity == 0.0  # no zeros: the weights are gone, not masked


def test_depth_and_heads_through_prune():
    model = tiny_llama(layers=3)
    rep = sparsecraft.prune(model, 0.0, method="depth", blocks=1, calib=calib_ids(4), progress=False)
    assert len(rep.info["structure"]["blocks_removed"]) == 1 and len(model.model.layers) == 2
    model = tiny_gpt2()
    rep = sparsecraft.prune(model, 0.5, method="heads", distribution="global", progress=False)
    assert sum(rep.info["structure"]["removed"].values()) == 4 and rep.info["structure"]["native_config"] is False


@pytest.mark.parametrize("method, kwargs, message", [
    ("channels", {"pattern": "2:4"}, "leave pattern unset"),
    ("channels", {"distribution": "owl"}, "takes distribution 'uniform' or 'global'"),
    ("depth", {"criterion": "magnitude", "calib": None}, "depth chooses what to remove itself"),
    ("heads", {"head_mode": "rows"}, "head_mode must be 'query' or 'kv'"),
    ("channels", {"overrides": [{"match": "x", "sparsity": 0.1}]}, "no per-layer overrides"),
])
def test_structural_errors(method, kwargs, message):
    model = tiny_llama()
    kwargs.setdefault("calib", calib_ids(2))
    with pytest.raises(SparsecraftError, match=message):
        sparsecraft.prune(model, 0.25, method=method, progress=False, **kwargs)
    assert model.model.layers[0].mlp.down_proj.in_features == 64
    with pytest.raises(SparsecraftError, match="chooses its own weights"):  # masking methods keep refusing both
        sparsecraft.prune(model, 0.5, method="sparsegpt", criterion="wanda", calib=calib_ids(2), progress=False)
    assert torch.count_nonzero(model.model.layers[0].mlp.up_proj.weight) == 64 * 32
