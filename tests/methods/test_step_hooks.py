"""Optimizer-step plumbing: ``step(closure)`` sees masked fresh gradients; a skipped step
changes no weight and no optimizer state, with any torch optimizer."""

import pytest
import torch
import torch.nn.functional as F

import sparsecraft
from sparsecraft.methods import attach
from sparsecraft.methods.static import Static

from .dst_util import batches, tiny_mlp


def _closure(model, opt, batch):  # noqa: ANN001, ANN202
    def closure():  # noqa: ANN202
        opt.zero_grad()
        loss = F.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.Adam(p, lr=0.05),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    lambda p: torch.optim.LBFGS(p, lr=0.1, max_iter=3),
], ids=["adam", "sgd", "lbfgs"])  # fmt: skip
def test_closure_step_keeps_exact_sparsity(make_opt) -> None:  # noqa: ANN001
    model = tiny_mlp()
    opt = make_opt(model.parameters())
    attach(model, opt, method="static", sparsity=0.9, distribution="uniform", total_steps=6)
    for batch in batches(6):
        opt.step(_closure(model, opt, batch))
        # the closure's fresh gradients were masked: pruned weights never moved
        assert sparsecraft.report(model).sparsity == pytest.approx(0.9, abs=1e-3)
    assert model[0].weight.abs().sum() > 0  # ... while the kept ones trained


def test_closure_passed_by_keyword_is_wrapped_too() -> None:
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    attach(model, opt, method="static", sparsity=0.8, distribution="uniform", total_steps=3)
    for batch in batches(3):
        opt.step(closure=_closure(model, opt, batch))
    assert sparsecraft.report(model).sparsity == pytest.approx(0.8, abs=1e-3)


class _SkipEveryOther(Static):
    def skip_optimizer_step(self) -> bool:
        return self.step_count % 2 == 1  # skip steps 2, 4, ...


@pytest.mark.parametrize("opt_name", ["sgd", "adamw", "rprop"])
def test_skipped_step_changes_nothing_and_gradients_come_back(opt_name) -> None:  # noqa: ANN001
    model = tiny_mlp()
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
           "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
           "rprop": lambda p: torch.optim.Rprop(p, lr=0.05)}[opt_name](model.parameters())  # fmt: skip
    m = _SkipEveryOther(model, opt, sparsity=0.5, total_steps=6).attach()
    for i, (x, y) in enumerate(batches(6), start=1):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        before = [p.detach().clone() for p in model.parameters()]
        state = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
                 for p in model.parameters()}  # fmt: skip
        opt.step()
        changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
        if i % 2 == 0:  # skipped: no weight, no state moved (bias and Adam's step included)
            assert not any(changed)
            for p in model.parameters():
                for k, v in opt.state[p].items():
                    assert torch.equal(torch.as_tensor(v), torch.as_tensor(state[id(p)][k]))
            # the gradients are back for the user (masked where pruned, as usual)
            assert all(torch.equal(p.grad, g) for p, g in zip(list(model.parameters())[1::2], grads[1::2]))
        else:
            assert any(changed[1::2])  # a real step trains the biases
    assert m.skipped_steps == 3
