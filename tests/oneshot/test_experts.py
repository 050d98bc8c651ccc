"""Pruning fused mixture-of-experts weights: targets, per-expert Wanda / SparseGPT statistics from
the tokens routed to each expert, reports and checkpoints (tiny random transformers MoE models)."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

import sparsecraft
from sparsecraft.moe import SparseLM, SparseLMConfig
from tests.moe.tiny_hf_moe import ARCHS, calib_ids, tiny_moe


def layer0_routing(model, ids):
    """Input of layer 0's MoE block in the dense model and the experts its router picks."""
    mlp = model.model.layers[0].mlp
    seen = {}

    def grab(module, args, out):
        seen["x"] = args[0].detach().reshape(-1, args[0].shape[-1])

    h = mlp.register_forward_hook(grab)
    with torch.no_grad():
        model(ids)
        _, _, idx = mlp.gate(seen["x"])
    h.remove()
    return seen["x"], idx


def wanda_reference_mask(w, x, sparsity=0.5):
    """Keep per output row the largest |W_ij| * ||X_j||_2 (Wanda), x = the rows routed to the expert."""
    scores = w.abs() * x.norm(dim=0)
    k = int(w.shape[1] * sparsity)
    keep = torch.ones_like(w, dtype=torch.bool)
    keep.scatter_(1, torch.argsort(scores, dim=1)[:, :k], False)
    return keep


@pytest.mark.parametrize("arch", ARCHS)
def test_wanda_uses_each_experts_own_routed_tokens(arch):
    model = tiny_moe(arch)
    ids = calib_ids()
    x, idx = layer0_routing(model, ids)
    ex = model.model.layers[0].mlp.experts
    w1, w2 = ex.gate_up_proj.detach().clone(), ex.down_proj.detach().clone()
    rep = sparsecraft.prune(model, 0.5, criterion="wanda", calib=ids, progress=False)
    inter = w2.shape[2]
    for e in range(w1.shape[0]):
        xe = x[(idx == e).any(-1)]
        assert xe.shape[0] > 0
        assert torch.equal(ex.gate_up_proj_mask[e], wanda_reference_mask(w1[e], xe)), e
        h = F.silu(xe @ w1[e][:inter].t()) * (xe @ w1[e][inter:].t())
        assert torch.equal(ex.down_proj_mask[e], wanda_reference_mask(w2[e], h)), e
    layer = rep.layer("model.layers.0.mlp.experts.gate_up_proj")
    assert layer.shape == tuple(w1.shape) and layer.sparsity == 0.5


class OneLinear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(w.shape[1], w.shape[0], bias=False)])
        with torch.no_grad():
            self.layers[0].weight.copy_(w)

    def forward(self, input_ids):
        return self.layers[0](input_ids)


@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.5), ("2:4", 0.0)])
def test_sparsegpt_prunes_each_expert_like_a_linear_fed_its_routed_tokens(pattern, sparsity):
    model = tiny_moe("qwen2_moe")
    ids = calib_ids()
    x, idx = layer0_routing(model, ids)
    ex = model.model.layers[0].mlp.experts
    w1 = ex.gate_up_proj.detach().clone()
    sparsecraft.prune(model, sparsity, method="sparsegpt", pattern=pattern, calib=ids, progress=False)
    for e in (0, 3, 6):
        xe = x[(idx == e).any(-1)]
        alone = OneLinear(w1[e])
        sparsecraft.prune(alone, sparsity, method="sparsegpt", pattern=pattern, calib=[xe[None]], progress=False)
        assert torch.allclose(ex.gate_up_proj[e], alone.layers[0].weight, atol=1e-4), e


def test_experts_without_calibration_tokens_fall_back_to_magnitude_and_are_listed():
    torch.manual_seed(0)
    model = SparseLM(SparseLMConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=16, ffn="moe",
                                    moe={"n_experts": 4, "expert_dim": 8, "top_k": 1})).eval()
    model.layers[0].mlp.router.expert_bias[3] = -1e9  # expert 3 is never chosen
    w = model.layers[0].mlp.experts.gate_up_proj.detach().clone()
    rep = sparsecraft.prune(model, 0.5, criterion="wanda", calib=torch.randint(0, 40, (4, 16)), progress=False)
    assert rep.info["experts_without_tokens"] == {"layers.0.mlp.experts.gate_up_proj": [3],
                                                  "layers.0.mlp.experts.down_proj": [3]}
    keep = model.layers[0].mlp.experts.gate_up_proj_mask[3]
    want = torch.ones_like(keep)
    want.scatter_(1, torch.argsort(w[3].abs(), dim=1)[:, :8], False)
    assert torch.equal(keep, want)


@pytest.mark.parametrize("arch", ARCHS)
def test_data_free_nm_report_and_checkpoint_round_trip(arch, tmp_path):
    model = tiny_moe(arch)
    rep = sparsecraft.prune(model, 0.0, pattern="2:4", progress=False)
    experts = [layer for layer in rep.masked if "experts" in layer.name]
    assert len(experts) == 4 and all(layer.sparsity == 0.5 and layer.pattern == "2:4" for layer in experts)
    w = model.model.layers[1].mlp.experts.down_proj.detach()
    assert bool(((w.reshape(*w.shape[:2], -1, 4) != 0).sum(-1) <= 2).all())
    path = sparsecraft.save(model, tmp_path / "m.safetensors", format="nm")  # N:M packing per expert row
    doc = json.loads(safe_open(str(path), "pt").metadata()["sparsecraft"])
    assert doc["packed"]["model.layers.1.mlp.experts.down_proj"]["format"] == "nm"
    fresh = tiny_moe(arch, seed=1)
    sparsecraft.load(model=fresh, path=path)
    ids = calib_ids(1)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh(ids).logits)
    assert torch.equal(fresh.model.layers[1].mlp.experts.down_proj_mask, w != 0)


def test_owl_distribution_measures_expert_outliers_per_expert():
    model = tiny_moe("olmoe")
    rep = sparsecraft.prune(model, 0.5, criterion="wanda", distribution="owl", calib=calib_ids(), progress=False)
    assert len(rep.info["owl_ratios"]) == 2 and abs(rep.sparsity - 0.5) < 0.02
