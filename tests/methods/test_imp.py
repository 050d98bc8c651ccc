"""IMP: global rounds to 1 - (1 - s)^(i/P), rewinding to init or to step k, optimizer reset."""

import copy
import math

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods import attach
from sparsecraft.methods.optimizer_state import param_state

from .dst_util import batches, tiny_mlp, train_step


@pytest.mark.parametrize("rewind", ["init", 2])
def test_imp_rounds_rewind_and_reset(rewind):
    model = tiny_mlp()
    init = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    m = attach(model, opt, method="imp", total_steps=32, sparsity=0.875, rounds=3, rewind=rewind)
    assert m.phase_steps == 8 and m.lr_cycle_steps == 8
    assert m.round_sparsity(1) == pytest.approx(0.5) and m.round_sparsity(3) == pytest.approx(0.875)
    total = sum(t.numel for t in m.targets)
    snap = None
    for step, b in enumerate(batches(32), start=1):
        train_step(model, opt, b)
        if step == 2:
            snap = copy.deepcopy(model.state_dict())
        if step in (8, 16, 24):
            i = step // 8
            pruned = sum(int((~m.mask(t)).sum()) for t in m.targets)
            assert pruned == math.floor(m.round_sparsity(i) * total + 1e-6)
            ref = init if rewind == "init" else snap
            for t in m.targets:
                keep = m.mask(t)
                assert torch.equal(t.param[keep], ref[t.name][keep])  # rewound survivors
                assert torch.all(t.param[~keep] == 0)
                assert all(torch.all(s == 0) for s in param_state(opt, t.param).values())
    assert m.round == 3 and len(m.dynamics.updates) == 3


def test_imp_rejects_bad_config():
    with pytest.raises(SparsecraftError):
        attach(tiny_mlp(), None, method="imp", total_steps=10, sparsity=0.9, rounds=0)
    with pytest.raises(SparsecraftError):
        attach(tiny_mlp(), None, method="imp", total_steps=8, sparsity=0.9, rounds=3, rewind=5)
