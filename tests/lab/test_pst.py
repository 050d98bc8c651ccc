"""PST (Li et al. 2022): importance by hand, top-k mask, straight-through gradients, frozen W,
trainable-parameter counts, cubic schedule, the movement baseline, one-line errors."""

import pytest
import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.play_lines import EncoderClassifier
from sparsecraft.lab.pst import (
    ENCODER_LINEARS,
    MaskedLinear,
    PSTExperiment,
    PSTLinear,
    cubic_sparsity,
    fine_tune,
    measured_sparsity,
    pst_importance,
    set_sparsity,
    sparsify,
    trainable_parameters,
)
from tests.oneshot.tiny import tiny_bert

W = [[0.5, -0.1, 0.2, -0.9], [0.05, 0.3, -0.6, 0.15], [-0.25, 0.7, 0.01, -0.4]]
A = [[1.0], [-2.0], [0.5]]
B = [[0.2, -0.1, 0.4, 0.0]]
R = [0.1, 0.0, -0.2]
C = [0.0, 0.3, -0.1, 0.05]


def hand_importance(alpha1=1.0, alpha2=1.0):
    """S_ij = |W_ij| + alpha1 a_i b_j + alpha2 (r_i + c_j), element by element."""
    return [[abs(W[i][j]) + alpha1 * A[i][0] * B[0][j] + alpha2 * (R[i] + C[j]) for j in range(4)]
            for i in range(3)]


def layer_3x4(alpha1=1.0, alpha2=1.0):
    lin = nn.Linear(4, 3, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W))
        lin.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    layer = PSTLinear(lin, rank=1, mask_rank=1, alpha1=alpha1, alpha2=alpha2)
    with torch.no_grad():
        layer.A.copy_(torch.tensor(A))
        layer.B.copy_(torch.tensor(B))
        layer.R.copy_(torch.tensor(R))
        layer.C.copy_(torch.tensor(C))
    return layer


@pytest.mark.parametrize("alpha1, alpha2", [(1.0, 1.0), (0.5, 2.0)])
def test_importance_is_magnitude_plus_low_rank_plus_row_and_column(alpha1, alpha2):
    layer = layer_3x4(alpha1, alpha2)
    expected = torch.tensor(hand_importance(alpha1, alpha2))
    assert torch.allclose(layer.importance(), expected, atol=1e-6)
    assert torch.allclose(pst_importance(torch.tensor(W), torch.tensor(A), torch.tensor(B), torch.tensor(R),
                                         torch.tensor(C), alpha1, alpha2), expected, atol=1e-6)


def test_importance_uses_the_adapted_weight():
    layer = layer_3x4()
    with torch.no_grad():
        layer.U.copy_(torch.tensor([[1.0], [0.0], [2.0]]))
        layer.V.copy_(torch.tensor([[0.0, -1.0, 0.0, 0.5]]))
    s = hand_importance()
    # W' = W + U V changes row 0 col 1 (-0.1 - 1), row 0 col 3 (-0.9 + 0.5), row 2 cols 1, 3 (x2)
    for i, j, new in [(0, 1, -1.1), (0, 3, -0.4), (2, 1, -1.3), (2, 3, 0.6)]:
        s[i][j] += abs(new) - abs(W[i][j])
    assert torch.allclose(layer.importance(), torch.tensor(s), atol=1e-6)


def test_mask_keeps_exactly_the_top_of_the_importance():
    layer = layer_3x4()
    layer.sparsity = 0.5
    s = hand_importance()
    ranked = sorted(((s[i][j], i, j) for i in range(3) for j in range(4)), reverse=True)
    keep = {(i, j) for _, i, j in ranked[:6]}
    expected = torch.tensor([[W[i][j] if (i, j) in keep else 0.0 for j in range(4)] for i in range(3)])
    # a magnitude-only mask would keep (1, 2) (|W| 0.6, third largest) and drop (0, 1) (|W| 0.1)
    assert (1, 2) not in keep and (0, 1) in keep
    with torch.no_grad():
        out = layer(torch.eye(4)) - layer.bias  # x = I: row j of the output is column j of the used weight
    assert torch.allclose(out.T, expected, atol=1e-6)
    assert torch.allclose(layer.sparse_weight(), expected, atol=1e-6)


def test_straight_through_gradients_reach_the_small_matrices_and_w_stays_frozen():
    alpha1, alpha2 = 0.5, 2.0
    layer = layer_3x4(alpha1, alpha2)
    with torch.no_grad():
        layer.U.copy_(torch.tensor([[0.3], [-0.2], [0.1]]))
        layer.V.copy_(torch.tensor([[0.1, 0.2, -0.1, 0.0]]))
    layer.sparsity = 0.5
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0]])
    g = torch.tensor([[1.0, 0.5, -1.0], [2.0, -1.0, 0.0]])
    (layer(x) * g).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    u, v = torch.tensor([[0.3], [-0.2], [0.1]]), torch.tensor([[0.1, 0.2, -0.1, 0.0]])
    wp = torch.tensor(W) + u @ v
    s = wp.abs() + alpha1 * torch.tensor(A) @ torch.tensor(B) + alpha2 * (torch.tensor(R)[:, None] + torch.tensor(C))
    m = torch.zeros(12)
    m[s.flatten().argsort(descending=True)[:6]] = 1.0
    m = m.reshape(3, 4)
    d_used = g.T @ x                      # dL/d(M * W')
    d_s = d_used * wp                     # straight-through: dL/dS = dL/dM = dL/d(M W') * W'
    assert torch.allclose(layer.A.grad, alpha1 * d_s @ torch.tensor(B).T, atol=1e-5)
    assert torch.allclose(layer.B.grad, alpha1 * torch.tensor(A).T @ d_s, atol=1e-5)
    assert torch.allclose(layer.R.grad, alpha2 * d_s.sum(1), atol=1e-5)
    assert torch.allclose(layer.C.grad, alpha2 * d_s.sum(0), atol=1e-5)
    d_wp = d_used * m + d_s * wp.sign()   # W' feeds the masked product and |W'| in S
    assert torch.allclose(layer.U.grad, d_wp @ v.T, atol=1e-5)
    assert torch.allclose(layer.V.grad, u.T @ d_wp, atol=1e-5)


def test_trainable_parameters_match_the_hand_count():
    model = EncoderClassifier(tiny_bert(), 3)  # hidden 32, intermediate 64, 2 layers
    total = sum(p.numel() for p in model.parameters())
    state = sparsify(model, "pst", [ENCODER_LINEARS], rank=2, mask_rank=3)
    assert len(state["layers"]) == 12
    square = (32 + 32) * (2 + 3) + 32 + 32            # q, k, v, attention output: 384 each
    ffn = (64 + 32) * (2 + 3) + 64 + 32               # intermediate (64, 32) and output (32, 64): 576 each
    head = 32 * 3 + 3
    assert trainable_parameters(model) == 2 * (4 * square + 2 * ffn) + head == 5475
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.endswith("query.weight") for n in frozen) and any("LayerNorm" in n for n in frozen)
    base = EncoderClassifier(tiny_bert(), 3)
    sparsify(base, "movement", [ENCODER_LINEARS])
    assert trainable_parameters(base) == total


@pytest.mark.parametrize("step, value", [(0, 0.0), (10, 0.0), (25, 0.9 * (1 - 0.75 ** 3)), (40, 0.7875),
                                         (70, 0.9), (100, 0.9)])
def test_cubic_schedule(step, value):
    assert cubic_sparsity(0.9, 100, warmup=0.1, cooldown=0.3)(step) == pytest.approx(value)


def test_movement_scores_use_the_dense_gradient_of_the_masked_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    w0 = model[0].weight.detach().clone()
    state = sparsify(model, "movement", ["0"])
    layer = state["layers"]["0"]
    assert isinstance(layer, MaskedLinear)
    layer.keep.copy_(torch.tensor([[1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool))
    x, g = torch.randn(5, 4), torch.randn(5, 3)
    (model(x) * g).sum().backward()
    expected = -w0 * (g.T @ x)       # masked positions collect score too
    assert torch.allclose(state["criterion"].score(state["targets"]["0"]), expected, atol=1e-5)
    assert torch.all(layer.weight.grad[~layer.keep] == 0)
    set_sparsity(state, 0.5)
    top = set(expected.flatten().argsort(descending=True)[:6].tolist())
    assert set(torch.nonzero(layer.keep.flatten()).flatten().tolist()) == top


def test_fine_tune_reaches_the_target_and_pst_leaves_w_untouched(one_thread):
    torch.manual_seed(0)
    ids, attn, labels = torch.randint(0, 64, (16, 6)), torch.ones(16, 6, dtype=torch.long), torch.arange(16) % 2
    for method in ("pst", "movement", "magnitude"):
        model = EncoderClassifier(tiny_bert(), 2)
        q0 = model.encoder.encoder.layer[0].attention.self.query.weight.detach().clone()
        state = sparsify(model, method, [ENCODER_LINEARS])
        fine_tune(model, state, (ids, attn, labels), sparsity=0.5, steps=4, batch_size=8, lr=1e-2)
        assert measured_sparsity(state) == pytest.approx(0.5)
        q1 = model.encoder.encoder.layer[0].attention.self.query.weight
        assert torch.equal(q0, q1) == (method == "pst")


@pytest.mark.parametrize("call, message", [
    (lambda: cubic_sparsity(1.0, 10), r"sparsity must be a number in \[0, 1\), got 1.0"),
    (lambda: cubic_sparsity(-0.1, 10), r"sparsity must be a number in \[0, 1\), got -0.1"),
    (lambda: PSTLinear(nn.Linear(4, 3), rank=0), "rank must be an integer >= 1, got 0"),
    (lambda: PSTLinear(nn.Linear(4, 3), mask_rank=0), "mask_rank must be an integer >= 1, got 0"),
    (lambda: PSTLinear(nn.Conv1d(4, 3, 1)), "PSTLinear wraps an nn.Linear, got Conv1d"),
    (lambda: sparsify(nn.Sequential(nn.Linear(2, 2)), "snip"), "unknown sparse fine-tuning method 'snip'"),
    (lambda: sparsify(nn.Sequential(nn.Linear(2, 2)), "pst", ["nothing"], trainable=()), "no untied nn.Linear layer"),
    (lambda: PSTExperiment(sparsities=(0.5, 1.0)), r"sparsity must be a number in \[0, 1\), got 1.0"),
    (lambda: PSTExperiment(rank=0), "rank must be an integer >= 1, got 0"),
    (lambda: PSTExperiment(methods=("pst", "rigl")), "methods must be a non-empty subset of pst, movement"),
])
def test_bad_input_is_one_line_error(call, message):
    with pytest.raises(SparsecraftError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_registered():
    assert EXPERIMENTS.get("pst") is PSTExperiment


class WordTokenizer:
    """Stands in for the real tokenizer: one id per word (a stable hash), padded to max_length."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            words = [sum(map(ord, w)) % 63 + 1 for w in t.split()][:max_length]
            ids[i, :len(words)], mask[i, :len(words)] = torch.tensor(words), 1
        return {"input_ids": ids, "attention_mask": mask}


def test_experiment_runs_end_to_end_on_a_tiny_encoder(monkeypatch, one_thread):
    from types import SimpleNamespace

    import sparsecraft.models as models

    tiny = SimpleNamespace(model=tiny_bert(), tokenizer=WordTokenizer())
    monkeypatch.setattr(models, "load_model", lambda name: tiny)
    exp = PSTExperiment(plays=("julius_caesar", "tempest"), sparsities=(0.5,), n_train=4, n_test=3, seq_len=8,
                        steps=3, batch_size=4)
    res = exp.run()
    rows = {r["method"]: r for r in res.data["rows"]}
    assert set(rows) == {"linear probe (dense, frozen)", "dense fine-tuning", "pst", "movement", "magnitude"}
    assert all(rows[m]["measured"] == pytest.approx(0.5) for m in ("pst", "movement", "magnitude"))
    assert rows["pst"]["trainable"] == 2 * (4 * ((32 + 32) * 16 + 64) + 2 * ((64 + 32) * 16 + 96)) + 66
    assert rows["movement"]["trainable"] == rows["dense fine-tuning"]["trainable"] == res.data["model_parameters"]
    assert rows["movement"]["scores"] == 2 * (4 * 32 * 32 + 2 * 64 * 32) and rows["pst"]["scores"] == 0
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows.values())
    assert "| pst | 0.50 | 0.500 |" in res.to_markdown()


def test_pst_on_a_decoder_with_targets_and_no_head(one_thread):
    from tests.oneshot.tiny import tiny_llama

    model = tiny_llama()  # hidden 32, intermediate 64, 2 layers
    state = sparsify(model, "pst", [r"mlp\.(gate|up|down)_proj"], ignore=[r"layers\.1\.mlp\.down"], trainable=())
    assert len(state["layers"]) == 5
    assert trainable_parameters(model) == 5 * ((64 + 32) * 16 + 96)
    set_sparsity(state, 0.5)
    ids = torch.randint(0, 64, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    gate = state["layers"]["model.layers.0.mlp.gate_proj"]
    assert gate.B.grad is not None and gate.B.grad.abs().sum() > 0 and gate.weight.grad is None
    assert model.model.embed_tokens.weight.grad is None
    assert measured_sparsity(state) == pytest.approx(0.5)
    with pytest.raises(SparsecraftError, match=r"trainable names modules the model does not have: \['head'\]"):
        sparsify(tiny_llama(), "pst", [r"mlp\."])
