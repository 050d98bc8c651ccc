"""The generic LM loop: schedule by hand, same batches for every model, loss goes down."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.training.lm import LMTrainConfig, evaluate_lm, lr_factor, random_windows, text_tokens, train_lm


class Bigram(nn.Module):
    def __init__(self, vocab: int = 10) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        self.seen: list[torch.Tensor] = []

    def forward(self, ids):
        if self.training:
            self.seen.append(ids.clone())
        return self.table(ids)


def test_lr_schedule_by_hand():
    cfg = LMTrainConfig(steps=110, warmup=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.55)
    assert lr_factor(110, cfg) == pytest.approx(0.1)


def test_uniform_model_loss_is_log_vocab():
    model = Bigram(10)
    nn.init.zeros_(model.table.weight)
    assert evaluate_lm(model, torch.arange(100) % 10, seq_len=9, n_windows=5) == pytest.approx(math.log(10))


def test_same_batches_for_every_model_and_learning():
    tokens = torch.arange(2000) % 10  # a deterministic cycle: the bigram table can learn it
    cfg = LMTrainConfig(steps=60, batch_size=4, seq_len=8, lr=0.3, warmup=5, eval_every=30, eval_windows=8)
    a, b = Bigram(), Bigram()
    torch.manual_seed(5)
    nn.init.normal_(b.table.weight)
    ra = train_lm(a, tokens, tokens[:200], cfg)
    train_lm(b, tokens, tokens[:200], cfg)
    assert all(torch.equal(x, y) for x, y in zip(a.seen, b.seen)) and len(a.seen) == 60
    assert ra.history[0]["step"] == 30 and ra.final_val_loss < 0.5 * math.log(10)
    assert ra.tokens_seen == 60 * 4 * 8


def test_random_windows_and_bytes():
    gen = torch.Generator().manual_seed(0)
    w = random_windows(torch.arange(50), 3, 7, gen)
    assert w.shape == (3, 8) and torch.equal(w[:, 1:] - w[:, :-1], torch.ones(3, 7, dtype=torch.long))
    with pytest.raises(SparsecraftError, match="too few"):
        random_windows(torch.arange(5), 1, 7, gen)


def test_text_tokens_bytes(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghij" * 10)
    train, val, vocab = text_tokens(str(tmp_path / "a.txt"))
    assert vocab == 256 and train.numel() == 90 and val.numel() == 10 and train[0] == ord("a")


def test_bad_config():
    with pytest.raises(SparsecraftError, match="steps must be a positive integer, got 0"):
        train_lm(Bigram(), torch.arange(100) % 10, torch.arange(100) % 10, LMTrainConfig(steps=0))
