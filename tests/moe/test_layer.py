import pytest
import torch
import torch.nn.functional as F

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe.layer import MoEFFN, fine_grained
from sparsecraft.moe.model import SparseLMConfig


def test_output_is_routed_experts_plus_ungated_shared_experts():
    torch.manual_seed(0)
    m = MoEFFN(8, n_experts=4, expert_dim=3, top_k=2, n_shared=2).eval()
    x = torch.randn(2, 5, 8)
    flat = x.reshape(-1, 8)
    p = (flat @ m.router.weight.t()).softmax(-1)
    w, idx = p.topk(2, dim=-1)
    routed = torch.stack([sum(w[t, j] * m.experts.expert_forward(int(idx[t, j]), flat[t:t + 1])[0] for j in range(2))
                          for t in range(flat.shape[0])])
    s = m.shared
    shared = s.down_proj.weight @ (F.silu(s.gate_proj.weight @ flat.t()) * (s.up_proj.weight @ flat.t()))
    assert s.gate_proj.weight.shape == (6, 8)  # n_shared x expert_dim wide
    assert torch.allclose(m(x), (routed + shared.t()).reshape(2, 5, 8), atol=1e-5)


def test_load_counts_accumulate_over_forwards_and_reset():
    torch.manual_seed(1)
    m = MoEFFN(4, n_experts=3, expert_dim=2, top_k=1)
    x1, x2 = torch.randn(6, 4), torch.randn(5, 4)
    want = torch.zeros(3, dtype=torch.float64)
    for x in (x1, x2):
        idx = (x @ m.router.weight.detach().t()).argmax(-1)
        want += torch.bincount(idx, minlength=3).double()
        m(x)
    assert torch.equal(m.load_counts, want) and m.load_counts.sum() == 11
    m.reset_load()
    assert m.load_counts.sum() == 0


def test_fine_grained_segmentation_keeps_active_and_total_width():
    assert fine_grained(512, 8, 1, 4) == {"n_experts": 32, "expert_dim": 128, "top_k": 4}
    with pytest.raises(SparsecraftError, match="granularity 3 must divide the expert width 512"):
        fine_grained(512, 8, 1, 3)


def test_from_config_checks_the_moe_options():
    with pytest.raises(SparsecraftError, match="unknown moe option\\(s\\) n_expert;"):
        MoEFFN.from_config(SparseLMConfig(ffn="dense", moe={"n_expert": 4, "expert_dim": 8}), 0)
    with pytest.raises(SparsecraftError, match="needs moe.expert_dim"):
        MoEFFN.from_config(SparseLMConfig(ffn="dense", moe={"n_experts": 4}), 0)
    m = MoEFFN.from_config(SparseLMConfig(d_model=16, moe={"n_experts": 4, "expert_dim": 8, "top_k": 2}), 0)
    assert (m.n_experts, m.top_k, m.experts.d_expert) == (4, 2, 8)
