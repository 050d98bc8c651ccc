"""Rank function of the FSDP2 sparse-training tests (importable by spawned processes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsecraft.distributed.fsdp import full, local
from sparsecraft.distributed.fsdp_checkpoint import load_sharded, save_sharded
from sparsecraft.methods import attach

STEPS = 12
CONFIGS = {
    "rigl": ({"method": "rigl", "sparsity": 0.7, "update": {"every": 3, "stop": 1.0}}, "adam"),
    "set": ({"method": "set", "sparsity": 0.7, "update": {"every": 3, "stop": 1.0}}, "sgd"),
    "gmp": ({"method": "gmp", "sparsity": 0.8, "every": 2, "start": 0, "end": 8}, "sgd"),
}


def net() -> torch.nn.Module:
    torch.manual_seed(0)  # rows 20 / 7 / 3: uneven shards on 2 ranks
    return torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.ReLU(), torch.nn.Linear(20, 7), torch.nn.ReLU(),
                               torch.nn.Linear(7, 3))


def opt_for(model: torch.nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=0.01)
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)


def shard(model: torch.nn.Module) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    for m in model:
        if isinstance(m, torch.nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def train(model, opt, steps, rank, world, checks=None) -> None:  # noqa: ANN001
    """``steps`` (first, last) of the shared data order; under FSDP each rank takes its half."""
    for step in range(*steps):
        x, y = batch(step)
        if world > 1:
            x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if checks is not None:
            checks.append(exact_on_shards(model))


def exact_on_shards(model: torch.nn.Module) -> bool:
    """Every pruned entry of this rank's shard of every weight is zero."""
    ok = True
    for m in model:
        if hasattr(m, "weight_mask"):
            w, keep = local(m.weight.detach()), local(m.weight_mask)
            ok &= bool((w[~keep] == 0).all())
    return ok


def run(kind: str, rank: int, world: int, tmp: str) -> dict:
    cfg, optim = CONFIGS[kind]
    out: dict = {}
    # single-process reference on every rank (same thread count, whole batches)
    ref = net()
    ref_opt = opt_for(ref, optim)
    ref_m = attach(ref, ref_opt, total_steps=STEPS, **cfg)
    train(ref, ref_opt, (0, STEPS), 0, 1)
    # FSDP2: 2 ranks, each half of every batch
    model = shard(net())
    opt = opt_for(model, optim)
    m = attach(model, opt, total_steps=STEPS, **cfg)
    checks: list[bool] = []
    train(model, opt, (0, STEPS // 2), rank, world, checks)
    save_sharded(f"{tmp}/{kind}-ckpt", model, opt, m, {"step": STEPS // 2})
    train(model, opt, (STEPS // 2, STEPS), rank, world, checks)
    final = {n: full(p.detach()) for n, p in model.named_parameters()}
    masks = {n: full(b) for n, b in model.named_buffers() if n.endswith("_mask")}
    ref_w = dict(ref.named_parameters())
    out["exact_every_step"] = all(checks)
    out["max_diff"] = max(float((final[n] - ref_w[n].detach()).abs().max()) for n in final)
    ref_masks = dict(ref.named_buffers())
    out["masks_equal_single"] = all(torch.equal(masks[n], ref_masks[n]) for n in masks)
    out["counts"] = {n: int(k.sum()) for n, k in masks.items()}
    out["ref_counts"] = {n: int(b.sum()) for n, b in ref.named_buffers() if n.endswith("_mask")}
    out["nonzeros"] = {n: int((final[n[: -len("_mask")]] != 0).sum()) for n in masks}
    out["updates"] = len(m.dynamics.updates)
    out["ref_updates"] = len(ref_m.dynamics.updates)
    # resume: a fresh FSDP2 model + optimizer + method, loaded from the step-6 shards
    model2 = shard(net())
    opt2 = opt_for(model2, optim)
    m2 = attach(model2, opt2, total_steps=STEPS, **cfg)
    extra = load_sharded(f"{tmp}/{kind}-ckpt", model2, opt2, m2)
    train(model2, opt2, (extra["step"], STEPS), rank, world)
    same = all(torch.equal(local(a.detach()), local(b.detach()))
               for a, b in zip(model.parameters(), model2.parameters()))
    same &= all(torch.equal(local(a), local(b)) for a, b in zip(model.buffers(), model2.buffers()))
    out["resume_bit_exact"] = bool(same)
    out["resume_step"] = m2.step_count
    return out


def all_methods(rank: int, world: int, tmp: str) -> dict:
    return {kind: run(kind, rank, world, tmp) for kind in CONFIGS}


def hf_callback(rank: int, world: int) -> dict:
    """The HF Trainer callback's hooks, driven as the Trainer does, on an FSDP2 model."""
    from sparsecraft.integrations.hf_trainer import SparsecraftCallback

    class State:
        max_steps = STEPS

    model = shard(net())
    opt = opt_for(model, "sgd")
    cb = SparsecraftCallback(method="rigl", sparsity=0.7, update={"every": 3, "stop": 1.0})
    cb.on_train_begin(None, State(), None, model=model, optimizer=opt)
    checks = []
    for step in range(STEPS):
        x, y = batch(step)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        cb.on_pre_optimizer_step(None, State(), None)
        opt.step()
        cb.on_optimizer_step(None, State(), None)
        checks.append(exact_on_shards(model))
    cb.on_train_end(None, State(), None)
    masks = {n: full(b) for n, b in model.named_buffers() if n.endswith("_mask")}
    return {"exact": all(checks), "updates": len(cb.method.dynamics.updates),
            "counts": {n: int(k.sum()) for n, k in masks.items()}}


def everything(rank: int, world: int, tmp: str) -> dict:
    out = all_methods(rank, world, tmp)
    out["hf"] = hf_callback(rank, world)
    return out
