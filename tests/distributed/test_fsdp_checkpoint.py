"""Sharded checkpoints in one process (no DTensor): round trip and refusal of an incomplete folder."""

import pytest
import torch
import torch.nn.functional as F

from sparsecraft.distributed.fsdp_checkpoint import MANIFEST, load_sharded, save_sharded
from sparsecraft.errors import CheckpointError
from sparsecraft.methods import attach


def _run(steps, model, opt):
    for s in steps:
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(6, 5, generator=g), torch.randint(0, 2, (6,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    return model, opt, attach(model, opt, method="rigl", total_steps=10, sparsity=0.6, update={"every": 2})


def test_round_trip_resumes_bit_exactly(tmp_path):
    model, opt, m = _setup()
    _run(range(5), model, opt)
    save_sharded(tmp_path / "ck", model, opt, m, {"step": 5})
    _run(range(5, 10), model, opt)
    model2, opt2, m2 = _setup()
    assert load_sharded(tmp_path / "ck", model2, opt2, m2) == {"step": 5}
    assert m2.step_count == 5
    _run(range(5, 10), model2, opt2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


def test_incomplete_or_foreign_checkpoint_is_refused(tmp_path):
    model, opt, m = _setup()
    save_sharded(tmp_path / "ck", model, opt, m)
    (tmp_path / "ck" / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="not a complete sharded checkpoint"):
        load_sharded(tmp_path / "ck", model, opt, m)
    save_sharded(tmp_path / "ck2", torch.nn.Linear(3, 3), torch.optim.SGD(torch.nn.Linear(3, 3).parameters(), lr=1))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_sharded(tmp_path / "ck2", model, opt)
