"""STE: masks valid N:M after every step (Linear, Conv2d), exact sparsity after finalize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecraft
from sparsecraft.methods import attach
from tests.core.helpers import Conv1D


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 4, 3)
        self.fc = nn.Linear(4 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def groups_by_hand(w: torch.Tensor, m: int) -> torch.Tensor:
    """Groups of m consecutive inputs: Linear (out, in) rows; Conv2d (out, in, kh, kw) with the
    input channels innermost, i.e. (out, kh, kw, in)."""
    if w.dim() == 4:
        w = w.permute(0, 2, 3, 1)
    return w.reshape(-1, m)


def nm_mask_by_hand(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest |w| of every group, back in the weight's own shape."""
    g = groups_by_hand(w.detach().abs(), m)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.topk(n, dim=-1).indices, True)
    if w.dim() == 4:
        o, i, kh, kw = w.shape
        return keep.reshape(o, kh, kw, i).permute(0, 3, 1, 2)
    return keep.reshape(w.shape)


def nm_ok(t, n: int, m: int) -> bool:
    w_f = t.module.sparsecraft_forward_weights["weight"]()
    return bool(((groups_by_hand(w_f, m) != 0).sum(-1) <= n).all())


def train(method: str, steps: int = 6, check=None, **cfg):  # noqa: ANN001, ANN201
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sp = attach(model, opt, method=method, total_steps=steps, **cfg)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 8, 5, 5)).pow(2).mean().backward()
        opt.step()
        model(torch.randn(1, 8, 5, 5))
        if check:
            check(sp)
    return model, sp


@pytest.mark.parametrize("method", ["ste", "sr-ste", "cast"])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4)])
def test_masks_valid_after_every_step_and_exact_after_finalize(method: str, n: int, m: int) -> None:
    def check(sp) -> None:  # noqa: ANN001
        for t in sp.targets:
            assert nm_ok(t, n, m)
            if method != "cast":  # cast recomputes every T1 steps only
                assert torch.equal(sp.mask(t), nm_mask_by_hand(t.param, n, m))

    model, sp = train(method, check=check, pattern=f"{n}:{m}")
    sp.finalize()
    for t in sp.targets:
        assert ((groups_by_hand(t.param, m) != 0).sum(-1) == n).all()
    rep = sparsecraft.report(model)
    assert rep.sparsity == pytest.approx(1 - n / m)
    assert "forward" not in model.conv.__dict__


def test_finetune_phase_freezes_mask_and_keeps_zeros() -> None:
    seen = []
    model, sp = train("ste", steps=8, finetune_steps=4, check=lambda sp: seen.append(
        (sp.hard_masks, {k: v.clone() for k, v in sp.masks().items()})))
    assert [h for h, _ in seen] == [False] * 3 + [True] * 5
    frozen = seen[3][1]
    for _, masks in seen[3:]:
        assert all(torch.equal(masks[k], frozen[k]) for k in masks)
    for t in sp.targets:
        assert (t.param[~sp.mask(t)] == 0).all()


def test_unfit_layer_raises_or_is_skipped() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    with pytest.raises(sparsecraft.SparsecraftError, match="'0.weight'"):
        attach(model, None, method="ste", total_steps=3)
    sp = attach(model, None, method="ste", total_steps=3, skip_unfit=True)
    assert [t.name for t in sp.targets] == ["1.weight"]


def test_gpt2_conv1d_groups_run_along_inputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(3, 8))
    sp = attach(model, None, method="sr-ste", pattern="2:4", total_steps=2)
    w_f = model[0].sparsecraft_forward_weights["weight"]()
    assert ((w_f != 0).t().reshape(3, 2, 4).sum(-1) == 2).all()  # per output, per 4 inputs
    x = torch.randn(5, 8)
    assert torch.allclose(model(x), x @ w_f + model[0].bias)
    sp.finalize()
    assert torch.equal(model[0].weight, w_f)


def test_mask_flips_are_logged_on_update_steps() -> None:
    model, sp = train("sr-ste", steps=6, update={"every": 2})
    ups = sp.dynamics.updates
    assert [u["step"] for u in ups] == [2, 4]
    for u in ups:  # N:M keeps the count: every drop in a group is matched by a growth
        assert u["dropped"] == u["grown"] and u["sad_count"] == 2 * u["dropped"]
    assert sum(u["dropped"] for u in ups) > 0  # lr 0.2 on random data moves masks
