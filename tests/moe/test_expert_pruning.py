import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe import SparseLM, SparseLMConfig, load_lm
from sparsecraft.moe.expert_pruning import find_moe_blocks, prune_experts, router_statistics, save_pruned
from sparsecraft.moe.layer import MoEFFN
from tests.moe.tiny_hf_moe import ARCHS, calib_ids, tiny_moe


class Wrap(nn.Module):
    """A bare MoE layer fed hidden states directly (``input_ids`` are float vectors here)."""

    def __init__(self, moe):
        super().__init__()
        self.moe = moe

    def forward(self, input_ids):
        return self.moe(input_ids)


def swiglu(w1, w2, x):
    d = w2.shape[1]
    return (F.silu(x @ w1[:d].t()) * (x @ w1[d:].t())) @ w2.t()


def test_frequency_and_saliency_against_a_direct_computation():
    torch.manual_seed(0)
    moe = MoEFFN(4, n_experts=3, expert_dim=5, top_k=2)
    x = torch.randn(2, 6, 4)
    stats = router_statistics(Wrap(moe), [x])[0]
    flat = x.reshape(-1, 4)
    p = (flat @ moe.router.weight.detach().t()).softmax(-1)
    w, idx = p.topk(2, dim=-1)
    freq, sal = [0.0] * 3, [0.0] * 3
    for t in range(12):
        for j in range(2):
            e = int(idx[t, j])
            y = swiglu(moe.experts.gate_up_proj[e].detach(), moe.experts.down_proj[e].detach(), flat[t])
            freq[e] += 1
            sal[e] += float(w[t, j]) * float(y.norm())
    assert stats.frequency.tolist() == freq and stats.tokens == 12
    assert stats.saliency.tolist() == pytest.approx(sal, rel=1e-5)


def masked_softmax_router(removed, top_k, normalize):
    """The routing of the original model with the removed experts' logits at -inf."""
    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.weight.shape[1])
        logits = F.linear(hidden_states, self.weight)
        logits[:, removed] = float("-inf")
        probs = logits.float().softmax(-1)
        top, idx = torch.topk(probs, top_k, dim=-1)
        if normalize:
            top = top / top.sum(-1, keepdim=True)
        return logits, top.to(logits.dtype), idx
    return forward


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_pruned_model_equals_the_masked_model_and_reloads(arch, tmp_path):
    tr = pytest.importorskip("transformers")
    model = tiny_moe(arch)
    ids = calib_ids()
    stats = router_statistics(model, ids)
    res = prune_experts(model, stats, n_remove=3, criterion="saliency")
    reference = tiny_moe(arch)
    normalize = arch == "mixtral" or bool(getattr(reference.config, "norm_topk_prob", False))
    for view in find_moe_blocks(reference):
        view.router.forward = types.MethodType(masked_softmax_router(res.removed[view.name], 2, normalize), view.router)
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    cfg_key = "num_local_experts" if arch == "mixtral" else "num_experts"
    assert getattr(model.config, cfg_key) == 5
    for view in find_moe_blocks(model):
        assert view.experts.gate_up_proj.shape[0] == 5 and view.router.weight.shape[0] == 5
        lowest = torch.argsort(stats[0].saliency if view.name.endswith("0.mlp") else stats[1].saliency)[:3]
        assert res.removed[view.name] == sorted(lowest.tolist())
    out = save_pruned(model, tmp_path / "pruned", res)
    again = tr.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, got, atol=1e-6)
    assert (out / "expert_pruning.json").is_file()


def test_trained_sparse_lm_expert_pruning_equals_masking_round_trips_and_reports_the_loss(tmp_path):
    from sparsecraft.jobs.recipe import run_recipe
    from sparsecraft.training.causal_lm import evaluate_lm

    text = tmp_path / "t.txt"
    text.write_text("".join(f"the quick brown fox {i % 17} jumps over the lazy dog.\n" for i in range(300)))
    run_dir, _ = run_recipe({"job": "lm-train", "data": {"source": str(text)}, "steps": 10, "batch_size": 4,
                             "seq_len": 24, "model": {"d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 24,
                                                      "ffn": "moe", "moe": {"n_experts": 6, "expert_dim": 8,
                                                                            "top_k": 2, "n_shared": 1}},
                             "eval": {"windows": 2}, "threads": 1, "progress": False}, tmp_path / "run")
    model = load_lm(run_dir / "model.safetensors").eval()  # the model section 2's job trained
    reference = load_lm(run_dir / "model.safetensors").eval()
    ids = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(0))
    before = evaluate_lm(model, ids)
    stats = router_statistics(model, ids, batch_size=2)
    assert [s.name for s in stats] == ["layers.0.mlp", "layers.1.mlp"]
    assert all(float(s.frequency.sum()) == 4 * 12 * 2 for s in stats)
    res = prune_experts(model, stats, fraction=0.5, criterion="frequency")
    for i, layer in enumerate(reference.layers):
        r = layer.mlp.router
        r.forward = types.MethodType(_masked_sparse_router(res.removed[f"layers.{i}.mlp"]), r)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5)
    after = evaluate_lm(model, ids)
    assert after != before and after == pytest.approx(evaluate_lm(reference, ids), rel=1e-5)  # the loss change
    assert model.config.moe["n_experts"] == 3 and model.layers[0].mlp.load_counts.shape == (3,)
    back = load_lm(save_pruned(model, tmp_path / "pruned", res) / "model.safetensors").eval()
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, model(input_ids=ids).logits)


def _masked_sparse_router(removed):
    from sparsecraft.moe.router import RouterOutput

    def forward(self, x):
        logits = F.linear(x, self.weight).float()
        logits[:, removed] = float("-inf")
        s = logits.softmax(-1)
        w, idx = torch.topk(s, self.top_k, dim=-1)
        return RouterOutput(idx, w, torch.bincount(idx.reshape(-1), minlength=self.n_experts))
    return forward


def test_bad_requests_are_one_line_errors():
    torch.manual_seed(0)
    model = SparseLM(SparseLMConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=24, ffn="moe",
                                    moe={"n_experts": 4, "expert_dim": 8, "top_k": 2}))
    stats = router_statistics(model, torch.randint(0, 40, (2, 8)))
    with pytest.raises(SparsecraftError, match="leaves 1, fewer than top_k=2"):
        prune_experts(model, stats, n_remove=3)
    with pytest.raises(SparsecraftError, match="exactly one of fraction"):
        prune_experts(model, stats, n_remove=1, fraction=0.5)
    with pytest.raises(SparsecraftError, match="criterion must be one of saliency, frequency"):
        prune_experts(model, stats, n_remove=1, criterion="random")
    with pytest.raises(SparsecraftError, match="no MoE layer"):
        find_moe_blocks(nn.Linear(2, 2))

    class OtherMoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(4, 2)
            self.experts = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    with pytest.raises(SparsecraftError, match="unsupported MoE module OtherMoE at 'blk'"):
        find_moe_blocks(nn.ModuleDict({"blk": OtherMoE()}))
