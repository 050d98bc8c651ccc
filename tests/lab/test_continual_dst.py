"""Continual DST: the shared layer's forward by hand, ownership, SET/RigL confined to free
positions with the distribution's budgets, no forgetting, capacity running out, and bad knobs."""

import pytest
import torch
import torch.nn.functional as F

from sparsecraft.errors import SparsecraftError
from sparsecraft.lab import EXPERIMENTS
from sparsecraft.lab.continual_dst import MultiHeadNet, SharedLinear, isolated_method, run_sequence, split_tasks


def test_shared_linear_shows_only_the_visible_tasks():
    layer = SharedLinear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        layer.values.copy_(torch.tensor([[5.0, 0.0], [7.0, 3.0]]))
        layer.owner.copy_(torch.tensor([[1, 0], [2, 1]], dtype=torch.int16))
    x = torch.tensor([[1.0, 2.0]])
    layer.show(0)
    assert layer(x).tolist() == [[2.0, 0.0]]  # only the trainable weight
    layer.show(1)
    assert layer(x).tolist() == [[7.0, 6.0]]  # + task 1: [[5, 1], [0, 3]] @ [1, 2]
    layer.show(2)
    assert layer(x).tolist() == [[7.0, 13.0]]  # + task 2's 7


def test_commit_freezes_kept_weights_and_refuses_owned_ones():
    layer = SharedLinear(3, 2)
    keep = torch.tensor([[True, False, False], [False, False, True]])
    w = layer.weight.detach().clone()
    assert layer.commit(1, keep) == 2
    assert torch.equal(layer.values[keep], w[keep]) and (layer.values[~keep] == 0).all()
    assert layer.owner.tolist() == [[1, 0, 0], [0, 0, 1]] and (layer.weight == 0).all()
    with pytest.raises(SparsecraftError, match="earlier task owns"):
        layer.commit(2, torch.tensor([[True, True, False], [False, False, False]]))


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_dst_stays_on_free_positions_with_the_distribution_budget(method):
    net = MultiHeadNet((10, 8, 4), 2, 2, seed=0)
    owned = torch.zeros(8, 10, dtype=torch.bool)
    owned[:, :5] = True  # half of the first layer belongs to an earlier task
    net.body[0].owner[owned] = 1
    net.show(1)
    opt = torch.optim.Adam([p.weight for p in net.body] + list(net.heads[1].parameters()), lr=0.01)
    dst = isolated_method(method, net, opt, total_steps=40, sparsity=0.75, distribution="uniform",
                          update={"every": 2, "stop": 0.9}, seed=0)
    counts = [int(dst.mask(t).sum()) for t in dst.targets]
    assert counts == [20, 8]  # 25% of 80 (fits in the 40 free) and of 32
    x, y = torch.randn(16, 10), torch.randint(0, 2, (16,))
    seen = set()
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        m0 = dst.mask(dst.targets[0])
        assert not (m0 & owned).any() and int(m0.sum()) == 20
        seen.add(tuple(torch.nonzero(m0.flatten()).flatten().tolist()))
    assert len(dst.dynamics.updates) > 0 and len(seen) > 1  # the mask did move
    dst.finalize()


def _blob_tasks(n_tasks, n, seed):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(2 * n_tasks).repeat(n)
    centres = 2 * torch.randn(2 * n_tasks, 12, generator=gen)
    return centres[y] + 0.7 * torch.randn(len(y), 12, generator=gen), y


def test_split_tasks_relabels_pairs():
    y = torch.tensor([0, 1, 2, 3, 3, 0])
    tasks = split_tasks((torch.arange(6.0)[:, None], y, torch.zeros(1, 1), torch.tensor([2])), 2)
    assert tasks[0][0].flatten().tolist() == [0.0, 1.0, 5.0] and tasks[0][1].tolist() == [0, 1, 0]
    assert tasks[1][1].tolist() == [0, 1, 1] and tasks[1][3].tolist() == [0] and len(tasks[0][3]) == 0


def test_no_forgetting_and_capacity_runs_out():
    x, y = _blob_tasks(3, 40, 0)
    xt, yt = _blob_tasks(3, 20, 0)
    tasks = split_tasks((x, y, xt, yt), 3)
    r = run_sequence(tasks, sizes=(12, 16, 8), method="set", sparsity=0.5, distribution="uniform", epochs=3,
                     lr=0.02, seed=0)
    assert r["final"] == r["just"]  # frozen and hidden: nothing learned later changes an earlier task
    # uniform 50%: tasks 1 and 2 take half of every layer each, task 3 finds nothing free
    assert [o["body.0"] for o in r["owned"]] == [96, 96, 0] and r["used"] == [1.0, 1.0]
    assert min(r["final"][:2]) > 0.8


def test_experiment_rows_and_knobs():
    x, y = _blob_tasks(5, 10, 1)
    res = EXPERIMENTS.build({"type": "continual-dst", "sparsities": [0.5], "methods": ["set"], "sizes": [12, 8],
                             "seeds": [0], "epochs": 1, "data": (x, y, x, y)}).run()
    assert [r[:3] for r in res.tables[0].rows] == [["50%", "erk", "set"], ["50%", "uniform", "set"]]
    assert "ERK" in res.finding and len(res.data["runs"]["0.5/erk/set"][0]["final"]) == 5


@pytest.mark.parametrize("spec, match", [({"methods": ["gmp"]}, "methods"), ({"distributions": ["er"]}, "distrib"),
                                         ({"sizes": [784]}, "sizes"), ({"n_tasks": 6}, "n_tasks")])
def test_bad_settings_are_one_line_errors(spec, match):
    with pytest.raises(SparsecraftError, match=match):
        EXPERIMENTS.build({"type": "continual-dst", **spec})
