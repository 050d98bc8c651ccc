"""The SparseMethod lifecycle: attach errors, resume equality from state dicts, finalize."""

import pytest
import torch

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods import METHODS, attach
from sparsecraft.methods.base import make_update_rule
from sparsecraft.methods.optimizer_state import optimizer_from_tensors, optimizer_to_tensors

from .dst_util import batches, tiny_mlp, train_step


def test_attach_errors():
    with pytest.raises(SparsecraftError, match="unknown method"):
        attach(tiny_mlp(), None, method="nope", total_steps=3)
    with pytest.raises(SparsecraftError, match="total_steps"):
        attach(tiny_mlp(), None, method="rigl")
    with pytest.raises(SparsecraftError, match="update keys"):
        attach(tiny_mlp(), None, method="rigl", total_steps=3, update={"evry": 3})
    m = attach(tiny_mlp(), None, method="static", total_steps=3)
    with pytest.raises(SparsecraftError, match="already attached"):
        m.attach()
    assert {"static", "gmp", "imp", "set", "rigl"} <= set(METHODS.names())


def test_update_rule_fractions():
    r = make_update_rule({"every": 10, "start": 0.1, "stop": 0.75}, 1000, {"every": 1, "start": 0, "stop": None})
    assert (r.every, r.start, r.stop) == (10, 100, 750)


@pytest.mark.parametrize("method", ["rigl", "set", "gmp", "imp", "static"])
def test_resume_from_state_dicts_is_bit_exact(method):
    """Run 12 steps; or run 6, copy model/method/optimizer state into fresh objects, run 6 more."""
    kw = {"total_steps": 12, "sparsity": 0.8, "seed": 5}
    kw.update({"rigl": {"update": {"every": 2}}, "set": {"update": {"every": 2}}, "gmp": {"every": 2},
               "imp": {"rounds": 2}, "static": {}}[method])  # fmt: skip
    data = batches(12)

    def fresh():
        model = tiny_mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
        return model, opt, attach(model, opt, method=method, **kw)

    model, opt, m = fresh()
    for b in data:
        train_step(model, opt, b)
    ref = [p.detach().clone() for p in model.parameters()]

    model, opt, m = fresh()
    for b in data[:6]:
        train_step(model, opt, b)
    model_sd, method_sd = model.state_dict(), m.state_dict()
    opt_t, opt_s = optimizer_to_tensors(opt)
    model2, opt2, m2 = fresh()
    model2.load_state_dict(model_sd)
    m2.load_state_dict(method_sd)
    optimizer_from_tensors(opt2, opt_t, opt_s)
    for b in data[6:]:
        train_step(model2, opt2, b)
    assert m2.step_count == 12
    assert all(torch.equal(a, b) for a, b in zip(ref, model2.parameters()))


def test_finalize_removes_hooks():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = attach(model, opt, method="static", total_steps=4, sparsity=0.5)
    train_step(model, opt, batches(1)[0])
    m.finalize()
    train_step(model, opt, batches(1)[0])
    assert m.step_count == 1  # no more hooks after finalize
