"""Sharded checkpoints of an FSDP2 training run: each rank writes its own shards, no pickle.

``save_sharded(folder, model, optimizer, method, extra)`` writes, per rank,
``rank00000-of-00002.safetensors`` with this rank's local shard of every model tensor
(weights and masks), of every optimizer state tensor and of the sparse method's state, plus
the JSON structure (optimizer param groups, scalar state such as Adam's ``step``, the method's
step / dynamics / extras, ``extra``) in the file's metadata; every file goes through
:func:`sparsecraft.atomic.write_safetensors`. After a barrier rank 0 writes ``sharded.json``
(world size, file names) last: a folder without it is an interrupted save and is refused.

``load_sharded`` (same world size and the same ``fully_shard`` layout) puts every local shard
back in place -- parameters, masks, optimizer state (rebuilt as ``DTensor`` with the
parameter's mesh and placements), the method's step and RNG -- so a resumed run continues
bit-exactly. The files are safetensors + JSON, readable without torch.distributed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from sparsecraft import atomic
from sparsecraft.distributed import group
from sparsecraft.distributed.fsdp import from_local_like, is_dtensor, local
from sparsecraft.errors import CheckpointError

MANIFEST = "sharded.json"


def _file(rank: int, world: int) -> str:
    return f"rank{rank:05d}-of-{world:05d}.safetensors"


def _plain(v: torch.Tensor) -> torch.Tensor:
    return local(v.detach()).to("cpu").contiguous().clone()


def save_sharded(folder: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 method: Any = None, extra: dict[str, Any] | None = None) -> Path:
    """Write this rank's shards (a collective: every rank calls it)."""
    folder = Path(folder)
    rank, world = group.rank(), group.world_size()
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = _plain(v)
    sd = optimizer.state_dict()
    opt_doc: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        entry = {}
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = _plain(v)
                entry[name] = {"tensor": True, "dtensor": is_dtensor(v)}
            else:
                entry[name] = {"value": v}
        opt_doc["state"][str(pid)] = entry
    meth_doc = None
    if method is not None:
        ms = method.state_dict()
        for k, v in ms["tensors"].items():
            tensors[f"method.{k}"] = _plain(v)
        meth_doc = ms["meta"]
    doc = {"rank": rank, "world": world, "optimizer": opt_doc, "method": meth_doc, "extra": extra or {}}
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_safetensors(folder / _file(rank, world), tensors,
                             metadata={"sparsecraft_sharded": json.dumps(doc, default=str)})
    if group.active():
        torch.distributed.barrier()
    if group.is_writer():
        atomic.write_json(folder / MANIFEST, {"world": world, "files": [_file(r, world) for r in range(world)]})
    if group.active():
        torch.distributed.barrier()
    return folder


def load_sharded(folder: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 method: Any = None) -> dict[str, Any]:
    """Restore what :func:`save_sharded` wrote; returns its ``extra``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    rank, world = group.rank(), group.world_size()
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{str(folder)!r} is not a complete sharded checkpoint (no {MANIFEST})")
    saved_world = json.loads(manifest.read_text())["world"]
    if saved_world != world:
        raise CheckpointError(f"{str(folder)!r} was saved by {saved_world} ranks; this run has {world}: "
                              "resume with the same number of ranks")
    path = folder / _file(rank, world)
    with safe_open(str(path), framework="pt") as f:
        doc = json.loads((f.metadata() or {})["sparsecraft_sharded"])
    tensors = load_file(str(path))
    with torch.no_grad():
        for k, v in model.state_dict().items():
            saved = tensors.get(f"model.{k}")
            if saved is None or tuple(saved.shape) != tuple(local(v).shape):
                raise CheckpointError(f"sharded checkpoint does not match the model at {k!r}")
            local(v).copy_(saved)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in doc["optimizer"]["state"].items():
        p = params[int(pid)]
        st: dict[str, Any] = {}
        for name, e in entry.items():
            if "value" in e:
                st[name] = e["value"]
            else:
                t = tensors[f"optim.{pid}.{name}"]
                st[name] = from_local_like(t, p) if e["dtensor"] else t.to(local(p).device)
        state[int(pid)] = st
    optimizer.load_state_dict({"state": state, "param_groups": doc["optimizer"]["param_groups"]})
    if method is not None and doc["method"] is not None:
        by_name = {t.name: t for t in method.targets}
        mt: dict[str, torch.Tensor] = {}
        for k, v in tensors.items():
            if not k.startswith("method."):
                continue
            key = k[len("method."):]
            target = by_name.get(key[5:]) if key.startswith("mask.") else None
            mt[key] = from_local_like(v, target.param) if target is not None else v
        method.load_state_dict({"tensors": mt, "meta": doc["method"]})
    return doc["extra"]
