import copy

import pytest
import torch

import sparsecraft
from sparsecraft.oneshot.recovery import recover, squarehead_loss

from .tiny import calib_ids, tiny_llama


def test_squarehead_loss_formula():
    t = [torch.tensor([1.0, -1.0]), torch.tensor([2.0, 2.0])]
    s = [torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])]
    # block 0: mean((0, 2)^2) = 2 over mean(t^2) = 1; block 1: mean((0, 2)^2) = 2 over 4
    assert float(squarehead_loss(s, t, eps=0.0)) == pytest.approx(2.0 + 0.5)
    assert float(squarehead_loss(t, t)) == 0.0


@pytest.mark.parametrize("loss", ["squarehead", "lm"])
def test_recovery_keeps_masks_exact_and_reduces_loss(loss):
    torch.manual_seed(0)
    teacher = tiny_llama(seed=2)
    student = copy.deepcopy(teacher)
    ids = calib_ids(4, 16)
    sparsecraft.prune(student, 0.6, pattern="2:4", progress=False)
    before = sparsecraft.report(student)
    res = recover(student, ids, teacher=teacher, loss=loss, steps=25, lr=3e-3, batch_size=4, progress=False)
    after = sparsecraft.report(student)
    assert [l.nonzeros for l in after.layers] == [l.nonzeros for l in before.layers]
    for mp in sparsecraft.masked_params(student):
        assert (mp.param[~mp.mask] == 0).all()
    assert res.losses[-1] < res.losses[0]
    assert res.steps == 25
