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


@pytest.mark.parametrize("finetune", ["ste", "frozen"])
def test_sdgf_in_steps_follows_the_schedule_and_ends_exact(finetune: str) -> None:
    model, sp, log = _run(100, method="pgf", mode="sdgf", frames="geometric", pattern="1:8",
                          dense_steps=10, finetune_steps=10, finetune=finetune)
    assert log[0][0] == "dense" and log[0][2] == 1.0
    assert [log[s][1] for s in (10, 29, 30, 50, 70, 95)] == [
        "8:64", "8:64", "4:32", "2:16", "1:8", "1:8"]
    assert log[89][0] == "decay" and log[90][0] == "finetune"
    assert log[89][3] is False and log[90][3] is (finetune == "frozen")
    sp.finalize()
    w = model[0].weight
    assert ((w != 0).reshape(8, -1, 8).sum(-1) == 1).all()


def test_mdgf_beta_decays_linearly_then_hard() -> None:
    _, sp, log = _run(20, method="pgf", pattern="2:4", dense_steps=4, finetune_steps=4, rate="auto")
    betas = [b for _, _, b, _ in log]
    assert betas[:5] == [1.0] * 5
    assert betas[5] == pytest.approx(1 - 1 / 12) and betas[15] == pytest.approx(1 / 12)
    assert [p for p, *_ in log][15:] == ["decay"] + ["finetune"] * 4
    assert betas[16:] == [0.0] * 4
    assert not any(h for *_, h in log)  # reference fine-tune: STE, not a frozen hard mask


def _nm_mask_by_hand(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest |w| of every m consecutive inputs of every row."""
    groups = w.detach().abs().reshape(w.shape[0], -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(w.shape)


def test_finetune_recomputes_the_mask_every_forward_like_the_reference() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = attach(model, opt, method="pgf", pattern="2:4", total_steps=8, dense_steps=2,
                finetune_steps=4, rate="auto")
    x = torch.randn(5, 8)
    for step in range(8):
        if step == 6:  # weights move during the fine-tune: the kept set must follow them
            before = sp.mask(sp.targets[0]).clone()
            with torch.no_grad():
                model[0].weight.mul_(torch.tensor([3.0, 2.0, 0.1, 0.1, 0.1, 0.1, 3.0, 2.0]))
            assert sp.phase() == "finetune"
            out = model(x)
            assert not torch.equal(sp.mask(sp.targets[0]), before)
        opt.zero_grad()
        out = model(x)
        if step >= 4:  # fine-tune: forward uses the N:M of the current W, every time
            w = model[0].weight
            assert torch.allclose(out, x @ (w * _nm_mask_by_hand(w, 2, 4)).t() + model[0].bias)
        out.pow(2).mean().backward()
        opt.step()
    assert sp.phase() == "finetune" and not sp.hard_masks
    assert (model[0].weight != 0).all()  # the dense weight kept training (STE), not zeroed
    sp.finalize()
    assert ((model[0].weight != 0).reshape(4, 2, 4).sum(-1) == 2).all()


def test_frozen_finetune_keeps_the_mask() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = attach(model, opt, method="pgf", pattern="2:4", total_steps=8, dense_steps=2,
                finetune_steps=4, rate="auto", finetune="frozen")
    for step in range(8):
        if step == 5:
            frozen = sp.mask(sp.targets[0]).clone()
            with torch.no_grad():
                model[0].weight.mul_(torch.tensor([3.0, 2.0, 0.1, 0.1, 0.1, 0.1, 3.0, 2.0]))
        opt.zero_grad()
        model(torch.randn(5, 8)).pow(2).mean().backward()
        opt.step()
    assert sp.hard_masks and torch.equal(sp.mask(sp.targets[0]), frozen)
    assert (model[0].weight[~frozen] == 0).all()


def test_finetune_option_is_validated() -> None:
    from sparsecraft.errors import SparsecraftError

    with pytest.raises(SparsecraftError, match="finetune 'hard'; allowed: ste, frozen"):
        attach(nn.Sequential(nn.Linear(8, 4)), None, method="pgf", total_steps=8, finetune="hard")
