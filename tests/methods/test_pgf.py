"""PGF: SDGF frames equal the ALGORITHMS.md test vector; MDGF decay; phases in training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsecraft.methods import attach
from sparsecraft.methods.pgf import decay_beta, frame_patterns, frame_schedule


def test_frames_equal_the_test_vector() -> None:
    assert frame_schedule(1, 8, 100, 10, 10, "stepwise") == {
        10: (7, 8), 30: (4, 8), 50: (2, 8), 70: (1, 8)}
    assert frame_schedule(1, 8, 100, 10, 10, "geometric") == {
        10: (8, 64), 30: (4, 32), 50: (2, 16), 70: (1, 8)}


def test_stepwise_frames_for_common_targets() -> None:
    assert frame_patterns(2, 4, "stepwise") == [(3, 4), (2, 4)]
    assert frame_patterns(1, 4, "stepwise") == [(3, 4), (2, 4), (1, 4)]
    assert frame_patterns(4, 8, "stepwise") == [(7, 8), (4, 8)]


def test_decay_beta() -> None:
    assert decay_beta(-1, 1e-4) == 1.0
    assert decay_beta(5000, 1e-4) == pytest.approx(0.5)
    assert decay_beta(20000, 1e-4) == 0.0
    assert decay_beta(5000, 2e-4, "exponential") == pytest.approx(math.exp(-1.0))


def _run(steps: int, **cfg):  # noqa: ANN003, ANN202
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = attach(model, opt, total_steps=steps, **cfg)
    log = []
    for _ in range(steps):
        log.append((sp.phase(), sp.pattern.spec(), sp.beta, sp.hard_masks))
        opt.zero_grad()
        model(torch.randn(4, 64)).pow(2).mean().backward()
        opt.step()
    return model, sp, log


def test_sdgf_in_steps_follows_the_schedule_and_ends_exact() -> None:
    model, sp, log = _run(100, method="pgf", mode="sdgf", frames="geometric", pattern="1:8",
                          dense_steps=10, finetune_steps=10)
    assert log[0][0] == "dense" and log[0][2] == 1.0
    assert [log[s][1] for s in (10, 29, 30, 50, 70, 95)] == [
        "8:64", "8:64", "4:32", "2:16", "1:8", "1:8"]
    assert log[89][3] is False and log[90][3] is True
    sp.finalize()
    w = model[0].weight
    assert ((w != 0).reshape(8, -1, 8).sum(-1) == 1).all()


def test_mdgf_beta_decays_linearly_then_hard() -> None:
    _, sp, log = _run(20, method="pgf", pattern="2:4", dense_steps=4, finetune_steps=4, rate="auto")
    betas = [b for _, _, b, _ in log]
    assert betas[:5] == [1.0] * 5
    assert betas[5] == pytest.approx(1 - 1 / 12) and betas[15] == pytest.approx(1 / 12)
    assert [h for *_, h in log][15:] == [False, True, True, True, True]
