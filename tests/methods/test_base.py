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


def test_inf_gradient_at_a_pruned_position_leaves_zero_not_nan():
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    m = attach(model, opt, method="static", sparsity=0.5, total_steps=4)
    pruned = ~m.mask(m.targets[0])
    x, y = batches(1)[0]
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    model[0].weight.grad[pruned] = float("inf")  # e.g. an overflow in a dead connection
    opt.step()
    assert torch.isfinite(model[0].weight).all()
    assert (model[0].weight[pruned] == 0).all()
    assert (opt.state[model[0].weight]["momentum_buffer"][pruned] == 0).all()


@pytest.mark.parametrize("method", ["static", "rigl"])
def test_loading_dense_weights_keeps_the_masks(method):
    model = tiny_mlp()
    dense = {k: v.clone() for k, v in tiny_mlp(1).state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    m = attach(model, opt, method=method, sparsity=0.8, total_steps=10)
    train_step(model, opt, batches(1)[0])
    model.load_state_dict(dense, strict=False)  # no *_mask keys: the masks stay
    for t in m.targets:
        keep = m.mask(t)
        assert (t.param[~keep] == 0).all()  # re-applied at once, not at finalize()
        assert torch.equal(t.param[keep], dense[t.name][keep])
        assert all((s[~keep] == 0).all() for k, s in opt.state[t.param].items() if k != "step")
    model[2].load_state_dict({"weight": dense["2.weight"], "bias": dense["2.bias"]}, strict=False)
    assert (model[2].weight[~m.mask(m.targets[1])] == 0).all()
    m.finalize()  # detached: loading is plain torch again
    model.load_state_dict(dense, strict=False)
    assert torch.equal(model[0].weight, dense["0.weight"])


class _Tied(torch.nn.Module):
    """Two Linear layers that share one weight tensor (tied weights)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_shared_weight_gets_one_mask():
    import sparsecraft

    model = _Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = attach(model, opt, method="static", sparsity=0.5, distribution="uniform", total_steps=3)
    assert [t.name for t in m.targets] == ["a.weight"] and not hasattr(model.b, "weight_mask")
    opt.zero_grad()
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    assert int((model.a.weight == 0).sum()) == 32  # one random mask at 50%, not two
    rep = sparsecraft.report(model)
    assert [layer.name for layer in rep.layers] == ["a.weight"] and rep.sparsity == 0.5
    assert rep.model_numel == 64 + 16


def test_a_shared_weight_under_ste_feeds_one_forward_weight_to_every_holder():
    model = _Tied()
    m = attach(model, None, method="ste", pattern="2:4", total_steps=3)
    w_f = model.a.weight * m.mask(m.targets[0])
    x = torch.randn(3, 8)
    expect = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(x, w_f, model.a.bias)), w_f, model.b.bias)
    assert torch.allclose(model(x), expect)
    m.finalize()
    assert "forward" not in model.a.__dict__ and "forward" not in model.b.__dict__
