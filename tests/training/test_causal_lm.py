"""The causal-LM caller of the library's loop: schedule, batches, optimizer groups, training,
evaluation, parameter counts, text tokens."""

import math

import pytest
import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.moe import SparseLM, SparseLMConfig
from sparsecraft.training.causal_lm import (
    LMTrainSettings,
    count_parameters,
    evaluate_lm,
    lm_batch,
    lm_lr,
    make_lm_optimizer,
    split_tokens,
    text_tokens,
    train_lm,
)


class Bigram(nn.Module):
    """A plain module (logits as a bare tensor) that records the training batches it sees."""

    def __init__(self, vocab: int = 10) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids):
        if self.training:
            self.seen.append(input_ids.clone())
        return self.table(input_ids)


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


def test_train_lm_lowers_the_loss_and_moves_the_router_bias():
    m = tiny(bias_update_rate=0.01, aux_loss_coef=0.0)
    s = LMTrainSettings(steps=10, batch_size=4, seq_len=8, lr=3e-2)
    run = train_lm(m, make_lm_optimizer(m, s), torch.arange(400) % 32, s, eval_every=1)
    assert [c["step"] for c in run.curves] == list(range(1, 11)) and run.step == 10 and not run.stopped
    assert run.curves[-1]["train_loss"] < run.curves[0]["train_loss"] - 0.5
    assert [c["lr"] for c in run.curves] == [lm_lr(t, s) for t in range(10)]
    assert m.layers[0].mlp.router.expert_bias.abs().sum() > 0
    assert run.acc["tokens"] == 10 * 4 * 8


def test_same_batches_for_every_model_and_a_plain_module_learns():
    tokens = torch.arange(2000) % 10  # a deterministic cycle: the bigram table can learn it
    s = LMTrainSettings(steps=60, batch_size=4, seq_len=8, lr=0.3, warmup_steps=5)
    val = tokens[:200].reshape(25, 8)
    a, b = Bigram(), Bigram()
    torch.manual_seed(5)
    nn.init.normal_(b.table.weight)
    ra = train_lm(a, make_lm_optimizer(a, s), tokens, s, evaluate=lambda t: {"val_loss": evaluate_lm(a, val)},
                  eval_every=30)
    train_lm(b, make_lm_optimizer(b, s), tokens, s)
    assert len(a.seen) == 60 and all(torch.equal(x, y) for x, y in zip(a.seen, b.seen))
    assert torch.equal(a.seen[7], lm_batch(tokens, 7, s)[0])
    assert [c["step"] for c in ra.curves] == [30, 60] and ra.curves[-1]["val_loss"] < 0.5 * math.log(10)


def test_uniform_model_loss_is_log_vocab():
    model = Bigram(10)
    nn.init.zeros_(model.table.weight)
    assert evaluate_lm(model, (torch.arange(90) % 10).reshape(9, 10)) == pytest.approx(math.log(10))


def test_text_tokens_bytes_and_split(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghij" * 10)
    ids, vocab, tok = text_tokens(str(tmp_path / "a.txt"))
    assert vocab == 256 and tok is None and ids.numel() == 100 and ids[0] == ord("a")
    train, val = split_tokens(ids, 0.1, seq_len=4, n_windows=5)
    assert train.numel() == 90 and val.shape == (2, 4) and torch.equal(val.flatten(), ids[90:98])
    with pytest.raises(SparsecraftError, match="has 10 tokens, less than one window of 11"):
        split_tokens(ids, 0.1, seq_len=11, n_windows=5)


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
