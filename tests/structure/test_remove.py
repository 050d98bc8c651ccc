"""Removed model == masked model: the dependency groups are sliced exactly, nothing else changes.

The masked references are written by hand per architecture (the weights a channel or head owns,
zeroed by plain indexing), independently of the library's slots."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.masks import set_mask
from sparsecraft.structure import remove_channels, remove_heads, trace

from .models import HF_MAKERS, TinyResNet, calib_ids

#: per architecture: layers, MLP (rows written, columns read) and attention (q, k, v, o) modules
PARTS = {
    "llama": ("model.layers", (["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj"), "self_attn.{}_proj"),
    "mistral": ("model.layers", (["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj"), "self_attn.{}_proj"),
    "qwen2": ("model.layers", (["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj"), "self_attn.{}_proj"),
    "opt": ("model.decoder.layers", (["fc1"], "fc2"), "self_attn.{}_proj"),
    "bert": ("encoder.layer", (["intermediate.dense"], "output.dense"), None),
    "gpt2": ("transformer.h", (["mlp.c_fc"], "mlp.c_proj"), None),
}


@torch.no_grad()
def zero_channels(layer, arch, cs):
    """Zero MLP channels ``cs``: producer rows (+ bias), consumer columns."""
    rows, col = PARTS[arch][1]
    for name in rows:
        m = layer.get_submodule(name)
        if arch == "gpt2":  # Conv1D stores (in, out)
            m.weight[:, cs] = 0
        else:
            m.weight[cs] = 0
        if m.bias is not None:
            m.bias[cs] = 0
    m = layer.get_submodule(col)
    if arch == "gpt2":
        m.weight[cs] = 0
    else:
        m.weight[:, cs] = 0


@torch.no_grad()
def zero_heads(layer, arch, q_heads, kv_heads, d, hidden):
    """Zero query heads (q rows, o columns) and key/value heads (k, v rows)."""
    def rows(hs):
        return [h * d + j for h in hs for j in range(d)]
    if arch == "gpt2":
        att = layer.attn
        att.c_attn.weight[:, rows(q_heads)] = 0
        att.c_attn.bias[rows(q_heads)] = 0
        att.c_attn.weight[:, [hidden + r for r in rows(kv_heads)]] = 0
        att.c_attn.weight[:, [2 * hidden + r for r in rows(kv_heads)]] = 0
        att.c_proj.weight[rows(q_heads)] = 0
        return
    if arch == "bert":
        att = layer.attention.self
        q, k, v, o = att.query, att.key, att.value, layer.attention.output.dense
    else:
        att = layer.self_attn
        q, k, v = (getattr(att, f"{p}_proj") for p in "qkv")
        o = att.out_proj if arch == "opt" else att.o_proj
    for lin, hs in ((q, q_heads), (k, kv_heads), (v, kv_heads)):
        lin.weight[rows(hs)] = 0
        if lin.bias is not None:
            lin.bias[rows(hs)] = 0
    o.weight[:, rows(q_heads)] = 0


def _layers(model, arch):
    return model.get_submodule(PARTS[arch][0])


@pytest.mark.parametrize("arch", sorted(HF_MAKERS))
def test_removed_equals_masked_channels_and_heads(arch):
    model = HF_MAKERS[arch]()
    g = trace(model)
    ids = calib_ids(2, 12)
    masked = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    keep_c, keep_h = {}, {}
    for i, (grp, head) in enumerate(zip(g.channels, g.heads)):
        keep = torch.rand(grp.size, generator=gen) > 0.4
        keep_c[grp.name] = keep
        zero_channels(_layers(masked, arch)[i], arch, torch.nonzero(~keep).reshape(-1).tolist())
        kh = torch.ones(head.hq, dtype=torch.bool)
        if i == 0 and head.group > 1 and head.hkv > 1:  # a whole key/value group with its query heads
            kh[: head.group] = False
            q_gone, kv_gone = list(range(head.group)), [0]
        elif head.group > 1:  # one query head from every group, evenly
            kh[head.group - 1:: head.group] = False
            q_gone, kv_gone = list(range(head.group - 1, head.hq, head.group)), []
        else:
            kh[1] = False
            q_gone, kv_gone = [1], [1]
        keep_h[head.name] = kh
        zero_heads(_layers(masked, arch)[i], arch, q_gone, kv_gone, head.d, head.hq * head.d)
    expected = masked(ids)[0]
    original = model(ids)[0]
    remove_channels(model, g, keep_c)
    ch = remove_heads(model, g, keep_h)
    got = model(ids)[0]
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    assert not torch.allclose(got, original, atol=1e-3)  # the removed structures did contribute
    kept = int(keep_c[g.channels[0].name].sum())
    first = _layers(model, arch)[0]
    down = first.get_submodule(PARTS[arch][1][1])
    assert (down.weight.shape[0] if arch == "gpt2" else down.weight.shape[1]) == kept
    if arch in ("gpt2", "opt", "bert"):
        assert ch.attrs[g.heads[0].name]  # num_heads / split_size / all_head_size follow


def test_removed_equals_masked_cnn_with_residual_adds():
    model = TinyResNet.trained()
    g = trace(model, torch.randn(1, 3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    masked = copy.deepcopy(model)
    keep = {"block1.c1": torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool),
            "block2.c2": torch.tensor([1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1], dtype=torch.bool)}
    with torch.no_grad():
        gone = [1, 4]  # block1.c1's channels: its rows, BN entries and block1.c2's input columns
        masked.block1.c1.weight[gone] = 0
        masked.block1.b1.weight[gone] = 0
        masked.block1.b1.bias[gone] = 0
        masked.block1.c2.weight[:, gone] = 0
        gone = [2, 7, 10]  # block2's output: both branches, their BNs, and fc's 4 columns per channel
        for conv, bn in ((masked.block2.c2, masked.block2.b2), (masked.block2.down[0], masked.block2.down[1])):
            conv.weight[gone] = 0
            bn.weight[gone] = 0
            bn.bias[gone] = 0
        masked.fc.weight[:, [c * 4 + j for c in gone for j in range(4)]] = 0
    expected = masked(x)
    remove_channels(model, g, keep)
    assert model.block1.c1.out_channels == 6 and model.block1.b1.num_features == 6
    assert model.block2.down[0].out_channels == 9 and model.fc.in_features == 36
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_masks_and_tied_weights_follow():
    model = HF_MAKERS["qwen2"]()  # tied embedding / head: untouched, but shared across modules
    g = trace(model)
    up = model.model.layers[0].mlp.up_proj
    set_mask(up, torch.rand(up.weight.shape) > 0.5)
    keep = torch.ones(64, dtype=torch.bool)
    keep[:16] = False
    remove_channels(model, g, {g.channels[0].name: keep})
    assert up.weight_mask.shape == up.weight.shape == (48, 48)
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("bad, message", [
    (lambda n: torch.zeros(n, dtype=torch.bool), "would remove every one of the 64 channels"),
    (lambda n: torch.ones(n + 1, dtype=torch.bool), "has 65 entries for 64 channels"),
    (lambda n: torch.ones(n), "must be boolean"),
])
def test_bad_keep_masks_change_nothing(bad, message):
    model = HF_MAKERS["llama"]()
    g = trace(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ok = torch.ones(64, dtype=torch.bool)
    ok[3] = False
    with pytest.raises(SparsecraftError, match=message):
        remove_channels(model, g, {g.channels[0].name: ok, g.channels[1].name: bad(64)})
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_uneven_gqa_heads_and_unknown_groups_are_refused():
    model = HF_MAKERS["qwen2"]()  # 6 query heads in 2 key/value groups of 3
    g = trace(model)
    keep = torch.tensor([0, 1, 1, 1, 1, 1], dtype=torch.bool)
    with pytest.raises(SparsecraftError, match=r"leaves \[2, 3\] query heads"):
        remove_heads(model, g, {g.heads[0].name: keep})
    with pytest.raises(SparsecraftError, match="no removable channel group 'model.embed_tokens'.*normalised"):
        remove_channels(model, g, {"model.embed_tokens": torch.ones(48, dtype=torch.bool)})
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (48, 48)
