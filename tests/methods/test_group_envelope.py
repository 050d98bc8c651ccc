"""Group sparse envelope (WGSEF): the penalty against its definition as a Fenchel biconjugate and
hand values, the prox against brute-force minimisation and a hand-solved case, the k-level
property, and the method's step on hand-checked channel groups."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from sparsecraft.errors import SparsecraftError
from sparsecraft.layout import WeightLayout
from sparsecraft.methods.group_envelope import envelope_level, prox_group_envelope_, prox_sef, sef_value

scipy_optimize = pytest.importorskip("scipy.optimize", reason="the brute-force references use scipy")


def conjugate_of_topk(x: np.ndarray, k: int) -> float:
    """s_k(x) = sup_y <x, y> - 1/2 sum of the k largest y_i^2 (the conjugate of f + delta_k is
    1/2 top-k sum of squares; s_k is its conjugate): concave maximisation from several starts."""
    def neg(y: np.ndarray) -> float:
        return -(x @ y - 0.5 * np.sort(y**2)[::-1][:k].sum())

    best = -np.inf
    for start in (x, np.sign(x) * np.abs(x).sum(), np.ones_like(x), -x):
        res = scipy_optimize.minimize(neg, start, method="Nelder-Mead",
                                      options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
        best = max(best, -res.fun)
    return best


def test_sef_by_hand():
    # k >= d: 1/2 ||x||^2; k = 1: 1/2 ||x||_1^2; (3,1,1), k=2: r=0 -> 1/2 (9 + (1+1)^2) = 6.5
    assert sef_value(torch.tensor([1.0, -2.0]), 2) == pytest.approx(2.5)
    assert sef_value(torch.tensor([1.0, -2.0, 3.0]), 1) == pytest.approx(18.0)
    assert sef_value(torch.tensor([3.0, 1.0, 1.0]), 2) == pytest.approx(6.5)
    # (1,1,1), k=2: r=1 -> 1/2 (1+1+1)^2 / 2 = 2.25 (above 1/2 ||x||^2 = 1.5: x is not 2-sparse)
    assert sef_value(torch.tensor([1.0, 1.0, 1.0]), 2) == pytest.approx(2.25)


@pytest.mark.parametrize("x, k", [([3.0, 1.0, 1.0], 2), ([0.5, -2.0, 1.5], 2), ([1.0, 1.0, 1.0], 2),
                                  ([2.0, -0.3, 0.7, 1.1], 2), ([2.0, -0.3, 0.7, 1.1], 3), ([0.2, 0.9, -0.4], 1)])
def test_sef_equals_the_biconjugate(x, k):
    assert sef_value(torch.tensor(x), k) == pytest.approx(conjugate_of_topk(np.array(x), k), rel=1e-5)


def test_prox_by_hand():
    # lam/2 ||z||_1^2 at (3, 1), lam = 1: z2 = 0 since |1| <= ||z||_1 = 1.5, z1 = 3 - 1.5
    assert torch.allclose(prox_sef(torch.tensor([3.0, 1.0]), 1, 1.0), torch.tensor([1.5, 0.0]))
    # k >= number of entries: prox of lam/2 ||.||^2 = x / (1 + lam)
    assert torch.allclose(prox_sef(torch.tensor([2.0, -4.0]), 2, 1.0), torch.tensor([1.0, -2.0]))
    assert torch.equal(prox_sef(torch.tensor([0.0, 0.0]), 1, 1.0), torch.zeros(2))


@pytest.mark.parametrize("x, k, lam", [([3.0, 1.0, 1.0], 2, 0.5), ([0.5, -2.0, 1.5], 2, 2.0),
                                       ([2.0, -0.3, 0.7], 1, 0.3), ([1.0, 0.9, 0.2], 2, 5.0)])
def test_prox_equals_brute_force_minimisation(x, k, lam):
    xv = np.array(x)

    def objective(z: np.ndarray) -> float:  # the closed-form s_k, itself pinned to the biconjugate above
        return lam * sef_value(torch.from_numpy(z), k) + 0.5 * ((z - xv) ** 2).sum()

    p = prox_sef(torch.tensor(x, dtype=torch.float64), k, lam).numpy()
    # the grid around the answer and a free search never find a lower objective
    grid = [np.linspace(-0.2, 0.2, 5)] * len(x)
    f_p = objective(p)
    assert all(objective(p + np.array(d)) >= f_p - 1e-7 for d in itertools.product(*grid))
    res = scipy_optimize.minimize(objective, xv / (1 + lam), method="Nelder-Mead",
                                  options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000})
    assert f_p <= res.fun + 1e-7 and np.allclose(p, res.x, atol=2e-3)


def test_k_level_property():
    x = torch.randn(40, generator=torch.Generator().manual_seed(0))
    counts = [int((prox_sef(x, 7, lam) != 0).sum()) for lam in (0.01, 0.3, 3.0, 300.0)]
    assert counts == sorted(counts, reverse=True) and counts[0] > 7 and counts[-1] == 7
    assert all(c >= 7 for c in counts)  # never fewer than k groups survive


def test_group_prox_scales_each_channel_by_its_norm_prox():
    lay = WeightLayout("linear", (3, 2))
    w = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 1.0]])  # channel norms 5, 1, 1
    zeroed = prox_group_envelope_(w, lay, 1, 2, k=1, thresh=1.0)
    # prox of 1/2 ||u||_1^2 at (5, 1, 1): z = (5 - 5/2, 0, 0) since 1 <= ||z||_1 = 2.5
    assert zeroed == 2 and torch.allclose(w, torch.tensor([[1.5, 2.0], [0.0, 0.0], [0.0, 0.0]]))


def test_level_follows_the_pruning_convention():
    assert envelope_level(10, 0.5) == 5 and envelope_level(10, 0.75) == 3 and envelope_level(4, 0.99) == 1
    with pytest.raises(SparsecraftError, match="k must be >= 1"):
        sef_value(torch.ones(3), 0)


def test_method_keeps_k_channels_then_prunes_the_rest():
    from sparsecraft.methods import attach

    lin = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 0.9]]))
    model = nn.Sequential(lin)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sp = attach(model, opt, method="group-envelope", groups="channel", lam=2.0, sparsity=0.6,
                total_steps=3, finetune_steps=1)
    lin.weight.grad = torch.zeros_like(lin.weight)
    opt.step()  # k = 3 - floor(0.6 * 3) = 2, threshold lr * lam = 1
    assert sp.levels == {"0.weight": 2}
    # prox of s_2 at norms (5, 1, 0.9), lam 1: theta = clip(t u - 1, 0, 1) sums to 2 at t = 3 / 1.9
    # (theta = (1, 1.1/1.9, 0.8/1.9)), z_i = theta_i u_i / (theta_i + 1) = (2.5, 1.1/3, 0.72/2.7)
    assert torch.allclose(lin.weight.norm(dim=1), torch.tensor([2.5, 1.1 / 3, 0.72 / 2.7]), atol=1e-5)
    assert sp.zero_groups == {"0.weight": 0}
    opt.step()
    opt.step()
    sp.finalize()
    assert sp.pruned and sp.mask(sp.targets[0])[:, 0].tolist() == [True, True, False]  # 1 of 3 pruned
    assert (lin.weight[2] == 0).all()
