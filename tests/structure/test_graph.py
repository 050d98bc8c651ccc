"""The traced dependency graph: which groups, heads and frozen spaces each architecture has."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.structure import trace

from .models import HF_MAKERS, TinyResNet

MLP = {
    "llama": ("model.layers.{}.mlp.gate_proj", ["gate_proj", "up_proj", "down_proj"], 64),
    "mistral": ("model.layers.{}.mlp.gate_proj", ["gate_proj", "up_proj", "down_proj"], 48),
    "qwen2": ("model.layers.{}.mlp.gate_proj", ["gate_proj", "up_proj", "down_proj"], 64),
    "gpt2": ("transformer.h.{}.mlp.c_fc", ["c_fc", "c_proj"], 128),
    "opt": ("model.decoder.layers.{}.fc1", ["fc1", "fc2"], 64),
    "bert": ("encoder.layer.{}.intermediate.dense", ["intermediate.dense", "output.dense"], 64),
}
HEADS = {  # attention module, query heads, key/value heads, head size
    "llama": ("model.layers.{}.self_attn", 4, 2, 8),
    "mistral": ("model.layers.{}.self_attn", 4, 1, 8),
    "qwen2": ("model.layers.{}.self_attn", 6, 2, 8),
    "gpt2": ("transformer.h.{}.attn", 4, 4, 8),
    "opt": ("model.decoder.layers.{}.self_attn", 4, 4, 8),
    "bert": ("encoder.layer.{}.attention.self", 4, 4, 8),
}


@pytest.mark.parametrize("arch", sorted(HF_MAKERS))
def test_transformer_groups(arch):
    model = HF_MAKERS[arch]()
    g = trace(model)
    layers = model.config.num_hidden_layers
    name, parts, width = MLP[arch]
    assert [c.name for c in g.channels] == [name.format(i) for i in range(layers)]
    for i, c in enumerate(g.channels):
        assert c.size == width
        assert sorted(c.layers) == sorted(name.format(i).rsplit(".", 1)[0].replace(".intermediate", "") + "." + p
                                          for p in parts)
    att, hq, hkv, d = HEADS[arch]
    got = [(h.name, h.hq, h.hkv, h.d, h.dv) for h in g.heads]
    assert got == [(att.format(i), hq, hkv, d, d) for i in range(layers)]
    # the residual stream is normalised over its channels: frozen, with the norm named
    assert any("normalised over its channels by" in why for why in g.frozen.values())


def test_gqa_group_size_and_qwen2_biases_in_the_head_spaces():
    model = HF_MAKERS["qwen2"]()
    g = trace(model)
    h = g.heads[0]
    assert h.group == 3
    q_slots = {(s.module.rsplit(".", 1)[-1], s.name, s.dim) for s in g.slots(h.q[0])}
    assert q_slots == {("q_proj", "weight", 0), ("q_proj", "bias", 0)}
    o_slots = {(s.module.rsplit(".", 1)[-1], s.name, s.dim, s.role) for s in g.slots(h.o)}
    assert o_slots == {("o_proj", "weight", 1, "in")}


def test_gpt2_fused_qkv_is_one_space_with_three_ranges():
    g = trace(HF_MAKERS["gpt2"]())
    h = g.heads[0]
    assert h.q[0] == h.k[0] == h.v[0]
    assert (h.q[1], h.k[1], h.v[1]) == (0, 32, 64)  # q, k, v thirds of c_attn's 96 outputs
    assert {(s.name, s.dim) for s in g.slots(h.q[0])} == {("weight", 1), ("bias", 0)}  # Conv1D: (in, out)


def test_cnn_residual_adds_merge_groups_and_flatten_spreads():
    g = trace(TinyResNet(), torch.randn(2, 3, 8, 8))
    by_name = {c.name: c for c in g.channels}
    # stem + block1's residual stream: stem, its BN, block1.c2/b2 write it; block1.c1, block2.c1/down read it
    res = by_name["stem"]
    assert set(res.layers) == {"stem", "bn", "block1.c1", "block1.c2", "block1.b2", "block2.c1", "block2.down.0"}
    assert by_name["block1.c1"].layers == ["block1.c1", "block1.b1", "block1.c2"]
    # block2's output: its c2/b2 and the downsample branch are added, then pooled, flattened into fc
    out = by_name["block2.c2"]
    assert set(out.layers) == {"block2.c2", "block2.b2", "block2.down.0", "block2.down.1", "fc"}
    fc = next(s for s in out.slots if s.module == "fc")
    assert (fc.dim, fc.spread, fc.role) == (1, 4, "in")  # 12 channels x 2 x 2 flattened channel-major
    assert "fc" in g.frozen and "model output" in g.frozen["fc"]


class Mixer(nn.Module):
    """A channel permutation outside any layer: the trace cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)
        self.c = nn.Linear(4, 5)
        self.d = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x).flip(-1)  # aten.flip: unknown to the trace
        return self.b(h).sum(-1, keepdim=True) + self.d(torch.relu(self.c(x)))[..., :1]


def test_unknown_ops_freeze_and_name_the_op():
    g = trace(Mixer(), torch.randn(2, 4))
    assert [c.name for c in g.channels] == ["c"]
    assert "aten.flip" in g.frozen["a"]
    assert "sliced by aten.slice" in g.frozen["d"] or "model output" in g.frozen["d"]


def test_trace_needs_an_example_for_plain_models():
    with pytest.raises(SparsecraftError, match="example"):
        trace(TinyResNet())
    with pytest.raises(SparsecraftError, match="nn.Module"):
        trace("model")  # type: ignore[arg-type]


def test_describe_lists_everything():
    text = trace(HF_MAKERS["llama"]()).describe()
    assert text.splitlines()[0].startswith("2 channel groups, 2 attention head groups")
    assert "frozen" in text
