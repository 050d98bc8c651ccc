"""MAD experiment: the sparse attention masks, the variants' models, a tiny run that learns, knob errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.mad import MaskedSelfAttention, build_model, chance, train_and_test, window_mask
from sparsecraft.moe import MoEFFN
from sparsecraft.moe.attention import CausalSelfAttention

pytestmark = pytest.mark.usefixtures("one_thread")


def test_window_mask_by_hand():
    assert window_mask(4, 2).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]


def reference_attention(att: CausalSelfAttention, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """RoPE softmax attention written out by hand, with an explicit keep-mask."""
    b, t, _ = x.shape
    h, d = att.n_heads, att.head_dim
    q, k, v = (p(x).view(b, t, h, d).transpose(1, 2) for p in (att.q_proj, att.k_proj, att.v_proj))
    cos, sin = att._tables(t, x.device)
    from sparsecraft.moe.attention import apply_rope

    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1)
    return att.o_proj((weights @ v).transpose(1, 2).reshape(b, t, h * d))


def test_window_attention_keeps_only_the_last_keys():
    torch.manual_seed(0)
    att = MaskedSelfAttention(16, 2, 10000.0, "window", window=2)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(att(x), reference_attention(att, x, window_mask(5, 2)), atol=1e-5, rtol=1e-5)
    one = MaskedSelfAttention(16, 2, 10000.0, "window", window=1)
    one.load_state_dict(att.state_dict())
    torch.testing.assert_close(one(x), att.o_proj(att.v_proj(x)), atol=1e-5, rtol=1e-5)  # only itself
    dense = CausalSelfAttention(16, 2)
    dense.load_state_dict(att.state_dict())
    wide = MaskedSelfAttention(16, 2, 10000.0, "window", window=5)
    wide.load_state_dict(att.state_dict())
    torch.testing.assert_close(wide(x), dense(x), atol=1e-5, rtol=1e-5)
    assert wide.kept == wide.causal == 2 * 2 * 15


def test_topk_attention_keeps_the_highest_scores():
    torch.manual_seed(1)
    att = MaskedSelfAttention(16, 2, 10000.0, "topk", sparsity=0.5)
    x = torch.randn(1, 6, 16)
    q, k = (p(x).view(1, 6, 2, 8).transpose(1, 2) for p in (att.q_proj, att.k_proj))
    cos, sin = att._tables(6, x.device)
    from sparsecraft.moe.attention import apply_rope

    s = apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)
    keep = torch.zeros(1, 2, 6, 6, dtype=torch.bool)
    for hh in range(2):
        for i in range(6):
            n_keep = math.ceil(0.5 * (i + 1))
            for j in sorted(range(i + 1), key=lambda j: -float(s[0, hh, i, j].detach()))[:n_keep]:
                keep[0, hh, i, j] = True
    torch.testing.assert_close(att(x), reference_attention(att, x, keep), atol=1e-5, rtol=1e-5)
    assert att.kept == 2 * sum(math.ceil(0.5 * n) for n in range(1, 7))


def test_variants_differ_where_they_should():
    kw = dict(d_model=16, d_ff=32, n_heads=2, n_experts=3, window=2, attention_sparsity=0.5, compress=False, seed=0)
    dense, moe = build_model("dense", 10, 8, **kw), build_model("moe", 10, 8, **kw)
    assert all(isinstance(b.mlp, MoEFFN) and b.mlp.n_experts == 3 for b in moe.lm.layers)
    assert all(type(b.attn) is CausalSelfAttention for b in dense.lm.layers)
    win = build_model("window-attention", 10, 8, **kw)
    assert all(b.attn.kind == "window" for b in win.lm.layers)
    ids = torch.randint(10, (2, 8))
    assert dense(ids).shape == (2, 8, 10)
    torch.testing.assert_close(dense.lm.layers[0].attn.q_proj.weight, win.lm.layers[0].attn.q_proj.weight)
    comp = build_model("dense", 10, 8, **{**kw, "compress": True})
    out = comp(ids)
    assert out.shape == (2, 8, 10)
    ids2 = ids.clone()
    ids2[:, :-1] = (ids[:, :-1] + 1) % 10
    assert not torch.allclose(comp(ids2), out)  # the code of the last position depends on the whole sequence
    with pytest.raises(SparsecraftError, match="unknown MAD variant 'rnn'"):
        build_model("rnn", 10, 8, **kw)


def test_static_sparse_weights_stay_sparse():
    r = train_and_test("memorisation", "sparse-weights", {"vocab_size": 11, "seq_len": 8}, steps=5, n_train=16,
                       n_test=8, d_model=16, d_ff=32, sparsity=0.75)
    assert 0.7 < r["block_zeros"] < 0.8


def test_a_tiny_model_learns_memorisation_above_chance():
    opts = {"vocab_size": 11, "seq_len": 8}  # 5 facts: chance 20%
    r = train_and_test("memorisation", "dense", opts, steps=60, n_train=64, n_test=32, d_model=16, d_ff=32,
                       lr=1e-2, batch_size=16)
    assert chance("memorisation", opts) == pytest.approx(0.2)
    assert r["test_acc"] > 0.6


def test_selective_copying_loss_falls():
    from sparsecraft.lab.mad_tasks import IGNORE, selective_copying

    data = selective_copying(64, vocab_size=6, seq_len=10, n_copy=2, seed=0)
    model = build_model("dense", 6, 10, d_model=16, d_ff=32, n_heads=2, n_experts=2, window=2,
                        attention_sparsity=0.5, compress=False, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(data.inputs).reshape(-1, 6), data.targets.reshape(-1), ignore_index=IGNORE)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_experiment_runs_and_reports():
    exp = EXPERIMENTS.build({"type": "mad", "tasks": ["memorisation"], "variants": ["dense", "moe"], "steps": 3,
                             "n_train": 16, "n_test": 8, "d_model": 16, "d_ff": 16,
                             "task_options": {"memorisation": {"vocab_size": 11, "seq_len": 8}}})
    result = exp.run()
    assert [r[0] for r in result.tables[0].rows] == ["memorisation", "mean"]
    assert result.tables[0].rows[0][1] == "20.0"
    assert set(result.data["mean"]["memorisation"]) == {"dense", "moe"}
    assert result.finding.startswith("dense: memorisation ") and "moe: " in result.finding


@pytest.mark.parametrize(("knobs", "match"), [
    ({"variants": ["dense", "lstm"]}, "variants: unknown or empty"),
    ({"tasks": ["copying"]}, "tasks: unknown or empty"),
    ({"task_options": {"memorisation": {"vocab_size": 2}}}, "memorisation needs vocab_size >= 3"),
    ({"d_model": 20}, "d_model must be a multiple of 8"),
    ({"sparsity": 1.5}, r"sparsity must be a number in \[0.0, 0.99\]"),
    ({"seeds": []}, "seeds must list at least one seed"),
    ({"tasks": ["compression"], "task_options": {"memorisation": {}}}, "task_options name tasks not run"),
])
def test_bad_knobs(knobs, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "mad", **knobs})
