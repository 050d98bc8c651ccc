"""RigL under DistributedDataParallel (gloo, 2 CPU processes): each rank sees different data,
the all-reduced gradient drives growth, and masks stay identical on both ranks."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sparsecraft.methods import attach


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    m = attach(model, opt, method="rigl", total_steps=12, sparsity=0.7, update={"every": 3, "stop": 1.0})
    g = torch.Generator().manual_seed(100 + rank)  # different data per rank
    grads_equal = True
    for _ in range(12):
        x, y = torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        w = net[0].weight.grad.clone()
        other = w.clone()
        dist.broadcast(other, src=0)
        grads_equal &= torch.equal(w, other)
        opt.step()
    masks = [v.to(torch.uint8) for v in m.masks().values()]
    same = True
    for mk in masks:
        ref = mk.clone()
        dist.broadcast(ref, src=0)
        same &= torch.equal(ref, mk)
    grown = sum(u["grown"] for u in m.dynamics.updates)
    out[rank] = (same, grads_equal, len(m.dynamics.updates), grown, m.skipped_steps)
    dist.destroy_process_group()


def test_rigl_masks_identical_across_ranks():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        res = dict(out)
    assert res[0][0] and res[1][0]  # masks identical on both ranks
    assert res[0][1] and res[1][1]  # the gradient RigL reads is the all-reduced one
    assert res[0][2] == res[1][2] == 3 and res[0][3] > 0  # updates at 3, 6, 9 grew weights
    assert res[0][4] == res[1][4] == 3  # and made no optimizer update (skip_step_on_update)
