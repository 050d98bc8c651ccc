"""A model skeleton on ``meta`` whose weights are read from the shards on demand."""

import pytest
import torch

from sparsecraft.distributed.onload import OnloadedModel
from sparsecraft.errors import SparsecraftError
from tests.oneshot.tiny import tiny_gpt2, tiny_llama

pytest.importorskip("transformers")


def test_materialize_release_and_rotary_buffers(tmp_path):
    model = tiny_llama(layers=2).to(torch.bfloat16)
    model.save_pretrained(str(tmp_path))
    om = OnloadedModel(tmp_path)
    assert om.dtype == torch.bfloat16
    assert all(p.device.type == "meta" for p in om.model.parameters())
    rot = om.model.model.rotary_emb.inv_freq  # computed at construction: rebuilt for real
    assert rot.device.type == "cpu" and torch.equal(rot, tiny_llama(layers=2).model.rotary_emb.inv_freq)  # fp32
    names = om.params_under("model.layers.1")
    assert names and all(n.startswith("model.layers.1.") for n in names)
    om.materialize(names)
    ref = dict(model.named_parameters())
    for n in names:
        p = om.model.get_parameter(n)
        assert p.device.type == "cpu" and p.dtype == torch.bfloat16 and torch.equal(p, ref[n]) and not p.requires_grad
    om.release(names)
    assert all(om.model.get_parameter(n).device.type == "meta" for n in names)
    assert om.nbytes(names) == sum(ref[n].numel() * 2 for n in names)


def test_tied_weights_and_base_prefix(tmp_path):
    model = tiny_gpt2()  # ties lm_head to wte; the checkpoint stores transformer.*
    model.save_pretrained(str(tmp_path))
    om = OnloadedModel(tmp_path)
    assert om.checkpoint_name("transformer.h.0.attn.c_attn.weight") == "transformer.h.0.attn.c_attn.weight"
    assert om.checkpoint_name("lm_head.weight") is None  # tied: not stored, not needed


def test_checkpoint_that_does_not_match_its_config(tmp_path):
    tiny_llama(layers=2).save_pretrained(str(tmp_path))
    import json

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SparsecraftError, match="does not hold model.layers.2"):
        OnloadedModel(tmp_path)
