import math

import pytest
import torch

from sparsecraft.moe import SparseLM, SparseLMConfig
from sparsecraft.training.lm_loop import (
    LMTrainSettings,
    count_parameters,
    evaluate_lm,
    lm_batch,
    lm_lr,
    make_lm_optimizer,
    train_step,
)


def test_warmup_then_cosine_to_the_floor():
    s = LMTrainSettings(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lm_lr(0, s) == pytest.approx(0.1) and lm_lr(9, s) == pytest.approx(1.0)
    assert lm_lr(10, s) == pytest.approx(1.0)
    assert lm_lr(60, s) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert lm_lr(110, s) == pytest.approx(0.1) and lm_lr(500, s) == pytest.approx(0.1)


def test_batches_are_pure_functions_of_seed_and_step():
    tokens = torch.arange(1000)
    s = LMTrainSettings(steps=10, batch_size=3, seq_len=5, seed=7)
    x, y = lm_batch(tokens, 4, s)
    x2, y2 = lm_batch(tokens, 4, s)
    assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == (3, 5)
    assert torch.equal(y, x + 1)  # consecutive tokens, targets shifted by one
    assert not torch.equal(x, lm_batch(tokens, 5, s)[0])
    assert not torch.equal(x, lm_batch(tokens, 4, LMTrainSettings(steps=10, batch_size=3, seq_len=5, seed=8))[0])


def tiny(ffn="moe", **kw):
    torch.manual_seed(0)
    return SparseLM(SparseLMConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, d_ff=16, ffn=ffn,
                                   moe={"n_experts": 4, "expert_dim": 8, "top_k": 1, **kw}))


def test_weight_decay_only_on_matrices():
    m = tiny()
    opt = make_lm_optimizer(m, LMTrainSettings(steps=1, weight_decay=0.1))
    decay, plain = opt.param_groups
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert len(decay["params"]) + len(plain["params"]) == len(list(m.parameters()))


def test_train_steps_lower_the_loss_and_move_the_router_bias():
    m = tiny(bias_update_rate=0.01, aux_loss_coef=0.0)
    s = LMTrainSettings(steps=30, batch_size=4, seq_len=8, lr=1e-2)
    opt = make_lm_optimizer(m, s)
    x, y = lm_batch(torch.randint(0, 32, (200,), generator=torch.Generator().manual_seed(0)), 0, s)
    first = train_step(m, opt, x, y, s.lr, s.grad_clip)["loss"]
    for _ in range(20):
        last = train_step(m, opt, x, y, s.lr, s.grad_clip)["loss"]
    assert last < first - 0.5
    assert m.layers[0].mlp.router.expert_bias.abs().sum() > 0


def test_evaluate_lm_is_the_mean_next_token_cross_entropy():
    m = tiny("dense").eval()
    w = torch.randint(0, 32, (3, 9))
    logits = m(input_ids=w).logits[:, :-1]
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), w[:, 1:].reshape(-1)).item()
    assert evaluate_lm(m, w, batch_size=2) == pytest.approx(want, rel=1e-6)


def test_active_parameters_and_flops_by_hand():
    m = tiny()  # 2 MoE layers of 4 experts (2 * 8 * 16 + 16 * 8 = 384 weights each), top-1; tied embeddings
    c = count_parameters(m, seq_len=7)
    assert c["active"] == c["total"] - 2 * 3 * 384
    norms = 2 * 2 * 16 + 16  # two norms per layer + the final norm
    assert c["flops_per_token"] == 2 * (c["active"] - norms) + 4 * 16 * 4 * 2
    stem = SparseLM(SparseLMConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=16, ffn="stem"))
    cs = count_parameters(stem)
    assert cs["active"] == cs["total"] - 31 * 16  # one row of the 32 x 16 table
    assert math.isclose(count_parameters(tiny("dense"))["active"], count_parameters(tiny("dense"))["total"])
