"""Saved smaller models: plain from_pretrained where the config can say it, sparsecraft's loader
(and a clear refusal from plain transformers) where it cannot."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

import sparsecraft
from sparsecraft.models import load_model
from sparsecraft.structure import load_pretrained, prune_structure, remove_channels, save_pretrained, sync_config, trace
from sparsecraft.structure.hf import MESSAGE, needs_loader

from .models import HF_MAKERS, calib_ids

transformers = pytest.importorskip("transformers")


def test_uniform_widths_load_with_plain_transformers(tmp_path):
    model = HF_MAKERS["llama"]()
    prune_structure(model, 0.25, kind="channels")
    prune_structure(model, 0.5, kind="heads", head_mode="kv")
    ids = calib_ids(2, 9)
    out = model(ids).logits
    save_pretrained(model, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    fields = ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")
    assert [cfg[f] for f in fields] == [48, 2, 1, 8]
    assert cfg["sparsecraft_structure"]["native"] is True and len(cfg["sparsecraft_structure"]["history"]) == 2
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.allclose(plain(ids).logits, out, atol=1e-5)
    assert not needs_loader(tmp_path / "m")


@pytest.mark.parametrize("with_history", [True, False])
def test_per_layer_widths_are_recorded_and_refused_by_plain_transformers(tmp_path, with_history):
    model = HF_MAKERS["llama"]()
    g = trace(model)
    k0, k1 = torch.ones(64, dtype=torch.bool), torch.ones(64, dtype=torch.bool)
    k0[:10], k1[:20] = False, False
    change = remove_channels(model, g, {g.channels[0].name: k0, g.channels[1].name: k1})
    if with_history:
        rec = sync_config(model, change.to_dict())
        assert rec["native"] is False
        assert rec["history"][0]["removed"] == {g.channels[0].name: 10, g.channels[1].name: 20}
    else:  # save_pretrained describes the new shapes itself
        save_pretrained(model, tmp_path / "first")
        rec = model.config.sparsecraft_structure
        assert rec["native"] is False and rec["history"] == []
    assert rec["params"]["model.layers.1.mlp.down_proj.weight"] == [32, 44]
    ids = calib_ids(2, 9)
    out = model(ids).logits
    save_pretrained(model, tmp_path / "m")
    assert needs_loader(tmp_path / "m")
    with pytest.raises(Exception, match="sparsecraft.structure.load_pretrained") as e:
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert "hidden_size" in str(e.value) and MESSAGE in str(e.value)
    again = load_pretrained(tmp_path / "m")
    assert torch.allclose(again(ids).logits, out, atol=1e-6)
    assert again.config.hidden_size == 32  # the poisoned field is restored in memory
    assert torch.allclose(load_model(tmp_path / "m").model(ids).logits, out, atol=1e-6)  # the library's loader too


@pytest.mark.parametrize("arch", ["gpt2", "opt", "bert"])
def test_heads_no_config_field_can_express_round_trip(arch, tmp_path):
    model = HF_MAKERS[arch]()
    rep = prune_structure(model, 0.25, kind="heads")
    assert rep.native_config is False
    ids = calib_ids(2, 9)
    out = model(ids)[0]
    save_pretrained(model, tmp_path / "m")
    rec = json.loads((tmp_path / "m" / "config.json").read_text())["sparsecraft_structure"]
    assert rec["attrs"]  # head counts of the attention modules are stored
    with pytest.warns(UserWarning) if arch == "bert" else contextlib.nullcontext():  # BertModel adds a pooler
        again = load_pretrained(tmp_path / "m")
    assert torch.allclose(again(ids)[0], out, atol=1e-5)


def test_depth_and_slicegpt_round_trips(tmp_path):
    ids = calib_ids(4, 12)
    model = HF_MAKERS["qwen2"]()
    sparsecraft.prune(model, 0.0, method="depth", blocks=1, calib=ids, progress=False)
    out = model(ids).logits
    save_pretrained(model, tmp_path / "depth")
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "depth")
    assert plain.config.num_hidden_layers == 2 and torch.allclose(plain(ids).logits, out, atol=1e-5)
    model = HF_MAKERS["qwen2"]()
    sparsecraft.prune(model, 0.25, method="slicegpt", calib=ids, progress=False)
    out = model(ids).logits
    save_pretrained(model, tmp_path / "sliced")
    with pytest.raises(Exception, match="load_pretrained"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sliced")
    again = load_pretrained(tmp_path / "sliced")
    assert torch.allclose(again(ids).logits, out, atol=1e-6)
    assert again.model.layers[0].attn_shortcut.weight.shape == (32, 48)  # 48 -> 32 (36 rounded down to 8s)
