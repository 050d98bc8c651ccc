"""Resume mid-training (model, optimizer, method state) gives the uninterrupted weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsecraft.methods import attach

CFGS = {
    "pgf": dict(method="pgf", mode="sdgf", pattern="1:4", dense_steps=2, finetune_steps=3),
    "sr-ste": dict(method="sr-ste", pattern="2:4", finetune_steps=3),
    "cast": dict(method="cast", pattern="2:4", update={"every": 3}),
}
STEPS, CUT = 12, 5


def _build(cfg: dict):  # noqa: ANN202
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt, attach(model, opt, total_steps=STEPS, **cfg)


def _train(model, opt, steps) -> None:  # noqa: ANN001
    for s in steps:
        g = torch.Generator().manual_seed(s)
        opt.zero_grad()
        model(torch.randn(4, 8, generator=g)).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(CFGS))
def test_resume_equals_uninterrupted(name: str) -> None:
    model, opt, _ = _build(CFGS[name])
    _train(model, opt, range(STEPS))
    model2, opt2, sp2 = _build(CFGS[name])
    _train(model2, opt2, range(CUT))
    saved = ({k: v.clone() for k, v in model2.state_dict().items()}, opt2.state_dict(),
             sp2.state_dict())
    model3, opt3, sp3 = _build(CFGS[name])
    model3.load_state_dict(saved[0])
    sp3.load_state_dict(saved[2])
    opt3.load_state_dict(saved[1])
    _train(model3, opt3, range(CUT, STEPS))
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
