"""Optimizer-state utilities: only same-shape per-parameter tensors are touched; exact save/load."""

import torch

from sparsecraft.methods.optimizer_state import (
    mask_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    param_state,
    reset_state,
)


def stepped(opt_cls, **kw):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = opt_cls([p], **kw)
    for _ in range(2):
        opt.zero_grad()
        (p**2).sum().backward()
        opt.step()
    return p, opt


def test_adam_moments_zeroed_step_untouched():
    p, opt = stepped(torch.optim.AdamW, lr=0.1, amsgrad=True)
    keep = torch.rand(3, 4) > 0.5
    step_before = opt.state[p]["step"].clone()
    assert set(param_state(opt, p)) == {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert mask_state(opt, p, keep) == 3
    for v in param_state(opt, p).values():
        assert torch.all(v[~keep] == 0) and torch.all(v[keep] != 0)
    assert torch.equal(opt.state[p]["step"], step_before)


def test_sgd_momentum_reset_where_grown():
    p, opt = stepped(torch.optim.SGD, lr=0.1, momentum=0.9)
    grown = torch.zeros(3, 4, dtype=torch.bool)
    grown[0, 1] = True
    reset_state(opt, p, grown)
    buf = opt.state[p]["momentum_buffer"]
    assert buf[0, 1] == 0 and torch.count_nonzero(buf) == 11


def test_round_trip_is_exact():
    p, opt = stepped(torch.optim.Adam, lr=0.1, betas=(0.8, 0.95))
    tensors, structure = optimizer_to_tensors(opt)
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.Adam([q], lr=0.5)
    optimizer_from_tensors(opt2, tensors, structure)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95) and opt2.param_groups[0]["lr"] == 0.1
    for k, v in opt.state[p].items():
        assert torch.equal(v, opt2.state[q][k])
