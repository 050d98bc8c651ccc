"""The real model: SmolLM2-135M's traced graph, and removed == masked on it (one short window)."""

from __future__ import annotations

import copy

import torch

from sparsecraft.models import load_model
from sparsecraft.structure import remove_channels, remove_heads, trace


def test_smollm2_removed_equals_masked(smollm2_dir, shakespeare_protocol):
    model = load_model(smollm2_dir, kind="causal-lm").model
    g = trace(model)
    assert len(g.channels) == 30 and all(c.size == 1536 for c in g.channels)
    assert all((h.hq, h.hkv, h.d) == (9, 3, 64) for h in g.heads) and len(g.heads) == 30
    ids = shakespeare_protocol.eval[:1, :64]
    masked = copy.deepcopy(model)
    gone_c = torch.arange(0, 1536, 3)  # a third of layer 5's MLP channels
    gone_q = [3, 4, 5]  # layer 7: key/value group 1 with its three query heads
    with torch.no_grad():
        mlp = masked.model.layers[5].mlp
        mlp.gate_proj.weight[gone_c] = 0
        mlp.up_proj.weight[gone_c] = 0
        mlp.down_proj.weight[:, gone_c] = 0
        att = masked.model.layers[7].self_attn
        rows = torch.arange(3 * 64, 6 * 64)
        att.q_proj.weight[rows] = 0
        att.o_proj.weight[:, rows] = 0
        att.k_proj.weight[64:128] = 0
        att.v_proj.weight[64:128] = 0
    expected = masked(ids).logits
    keep_c = torch.ones(1536, dtype=torch.bool)
    keep_c[gone_c] = False
    keep_q = torch.ones(9, dtype=torch.bool)
    keep_q[gone_q] = False
    remove_channels(model, g, {"model.layers.5.mlp.gate_proj": keep_c})
    remove_heads(model, g, {"model.layers.7.self_attn": keep_q})
    assert model.model.layers[5].mlp.down_proj.in_features == 1024
    assert model.model.layers[7].self_attn.k_proj.out_features == 128
    assert torch.allclose(model(ids).logits, expected, atol=1e-4)
