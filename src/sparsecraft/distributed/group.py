"""The process group as sparsecraft sees it: who am I, do all ranks agree, sum in a fixed order.

Everything here is a thin layer over ``torch.distributed`` (gloo on CPU, nccl on GPU); nothing
is home-made transport. Three rules every distributed code path in sparsecraft follows:

* **errors on every rank**: a check that can fail on one rank only (a model or a calibration
  count that differs) first gathers the value from every rank, so that every rank sees the
  disagreement and raises the same one-line :class:`~sparsecraft.errors.SparsecraftError`
  instead of one rank raising while the others wait forever in the next collective;
* **one writer**: only rank 0 writes files (:func:`is_writer`);
* **a fixed summation order** where bit-exactness matters (:func:`ordered_sum`): per-item
  partial sums are gathered and added in the global item order, so the result is the
  single-process sum bit for bit, whatever the number of ranks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sparsecraft.errors import SparsecraftError


def _dist():
    import torch.distributed as dist

    return dist


def active() -> bool:
    """True under an initialised process group with more than one rank."""
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_writer() -> bool:
    """Only rank 0 (or a single process) writes output files."""
    return rank() == 0


def resolve(distributed: bool | None, what: str = "distributed pruning") -> bool:
    """``distributed``: ``None`` = use the process group when one with >1 rank is initialised;
    ``True`` = required (a one-line error when there is none); ``False`` = off."""
    if distributed is None:
        return active()
    if not isinstance(distributed, bool):
        raise SparsecraftError(f"distributed must be True, False or None (auto), got {distributed!r}")
    if distributed:
        dist = _dist()
        if not (dist.is_available() and dist.is_initialized()):
            raise SparsecraftError(
                f"{what} was asked for (distributed=True / --distributed) but no torch.distributed process "
                "group is initialised: launch with torchrun (the CLI then initialises it) or call "
                "torch.distributed.init_process_group() first"
            )
    return distributed and world_size() > 1


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); nccl when CUDA is there, else gloo.
    Returns False when the group already exists; raises a one-line error outside torchrun."""
    dist = _dist()
    if dist.is_initialized():
        return False
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise SparsecraftError(
            f"--distributed needs a process group, but {', '.join(missing)} is not set: launch with "
            "'torchrun --nproc-per-node N -m sparsecraft ...'"
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def device() -> torch.device:
    """The device collectives of this group run on (cuda for nccl, else cpu)."""
    dist = _dist()
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_values(value: Any) -> list[Any]:
    """``value`` (a small JSON-like object) from every rank, in rank order."""
    if not active():
        return [value]
    dist = _dist()
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def agree(value: Any, what: str) -> Any:
    """Check that every rank holds the same ``value``; otherwise raise on every rank a one-line
    error naming ``what`` and the differing values."""
    values = gather_values(value)
    if any(v != values[0] for v in values[1:]):
        shown = ", ".join(f"rank {r}: {v!r}"[:80] for r, v in enumerate(values))
        raise SparsecraftError(f"ranks disagree on {what} ({shown}); every rank must be started with the same one")
    return value


def raise_together(error: BaseException | None) -> None:
    """Collective: if any rank hit an error, every rank raises it (the first one's message), so
    no rank is left waiting in a collective that the failed rank never reaches."""
    msgs = gather_values(None if error is None else f"{type(error).__name__}: {error}")
    bad = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if not bad:
        return
    if error is not None and len(bad) == 1:
        raise error
    r, m = bad[0]
    raise SparsecraftError(f"rank {r} failed: {m.split(': ', 1)[-1]}")


def shard(n: int, rank_: int | None = None, world: int | None = None) -> list[int]:
    """Item indices ``0..n-1`` this rank takes: round robin (rank r: r, r+W, r+2W, ...)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(range(r, n, w))


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process)."""
    if active():
        dev = device()
        buf = tensor if tensor.device == dev else tensor.to(dev)
        _dist().all_reduce(buf)
        if buf is not tensor:
            tensor.copy_(buf)
    return tensor


def ordered_sum(parts: Mapping[int, torch.Tensor], n_items: int, like: torch.Tensor) -> torch.Tensor:
    """``sum_i parts[i]`` over the global items ``i = 0..n_items-1`` when each rank holds the
    parts of its own items: the parts are exchanged (a sum with exact zeros is exact) and then
    added in item order starting from zero -- the same float operations, in the same order, as
    ``acc = 0; for i: acc += part_i`` in one process, so the result is bit-identical to it."""
    stacked = torch.zeros((n_items, *like.shape), dtype=like.dtype, device=like.device)
    for i, p in parts.items():
        stacked[i] = p
    all_reduce_sum_(stacked)
    acc = torch.zeros_like(like)
    for i in range(n_items):
        acc += stacked[i]
    return acc


def fingerprint(tensors: Sequence[tuple[str, torch.Tensor]], sample: int = 2048) -> list[Any]:
    """A cheap identity of a model: names, shapes, dtypes and a float64 sum of each tensor's
    first ``sample`` elements (different weights, e.g. another seed, change it)."""
    out: list[Any] = []
    for name, t in tensors:
        if t.device.type == "meta":
            out.append([name, list(t.shape), str(t.dtype)])
            continue
        head = t.detach().reshape(-1)[:sample].to(torch.float64).sum().item()
        out.append([name, list(t.shape), str(t.dtype), round(head, 6)])
    return out
