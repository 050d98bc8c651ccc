"""RigL against an independent plain-torch loop: on mask-update steps the reference makes no
optimizer update (``skip_step_on_update=True``, google-research/rigl ``SparseRigLOptimizer``);
with ``False`` the update is applied first, then the mask changes."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sparsecraft.errors import SparsecraftError
from sparsecraft.methods import attach

from .dst_util import batches, tiny_mlp

EVERY, STEPS, ALPHA = 3, 9, 0.3  # updates at steps 3 and 6 (stop = 9 excluded)


def _reference_update(w: torch.Tensor, keep: torch.Tensor, dense_grad: torch.Tensor, step: int) -> torch.Tensor:
    """Drop the k smallest |w| of the active, grow the k largest |g| of the (new) inactive,
    k = floor(f * active), f = alpha/2 (1 + cos(pi t / T)); dropped and grown weights are 0."""
    f = ALPHA / 2 * (1 + math.cos(math.pi * step / STEPS))
    flat_keep = keep.flatten().clone()
    k = math.floor(f * int(flat_keep.sum()))
    drop = torch.topk(w.detach().abs().flatten().masked_fill(~flat_keep, math.inf), k, largest=False).indices
    flat_keep[drop] = False
    grow = torch.topk(dense_grad.abs().flatten().masked_fill(flat_keep, -math.inf), k).indices
    new = flat_keep.clone()
    new[grow] = True
    with torch.no_grad():
        w.view(-1)[~new | ~keep.flatten()] = 0.0
    return new.view_as(keep)


@pytest.mark.parametrize("skip", [True, False])
def test_rigl_equals_an_independent_loop(skip: bool) -> None:
    model = tiny_mlp()
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    m = attach(model, opt, method="rigl", sparsity=0.7, total_steps=STEPS, alpha=ALPHA,
               update={"every": EVERY, "stop": 1.0}, skip_step_on_update=skip, seed=1)  # fmt: skip
    layers = [ref[0], ref[2], ref[4]]
    keeps = [m.mask(t).clone() for t in m.targets]  # the same initial (random ERK) masks
    with torch.no_grad():
        for lin, keep in zip(layers, keeps):
            lin.weight.mul_(keep)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.2)
    for step, (x, y) in enumerate(batches(STEPS), start=1):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

        ref_opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        dense = [lin.weight.grad.clone() for lin in layers]
        for lin, keep in zip(layers, keeps):
            lin.weight.grad = torch.where(keep, lin.weight.grad, torch.zeros(()))
        update = step % EVERY == 0 and step < STEPS
        if not (update and skip):
            ref_opt.step()
        if update:
            keeps = [_reference_update(lin.weight, keep, g, step) for lin, keep, g in zip(layers, keeps, dense)]
        for p, q in zip(model.parameters(), ref.parameters()):
            assert torch.allclose(p, q, atol=1e-6), step
        assert all(torch.equal(m.mask(t), k) for t, k in zip(m.targets, keeps)), step
    assert len(m.dynamics.updates) == 2 and m.skipped_steps == (2 if skip else 0)


def test_skipped_update_step_leaves_adam_untouched() -> None:
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    attach(model, opt, method="rigl", sparsity=0.7, total_steps=STEPS, update={"every": EVERY, "stop": 1.0})
    for x, y in batches(STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert int(opt.state[model[4].bias]["step"]) == STEPS - 2  # 2 mask updates, no Adam step there


def test_skip_option_is_validated() -> None:
    with pytest.raises(SparsecraftError, match="skip_step_on_update"):
        attach(tiny_mlp(), None, method="rigl", total_steps=4, skip_step_on_update="yes")
