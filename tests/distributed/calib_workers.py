"""Rank function of the data-parallel calibration tests (importable by spawned processes): one
process group runs every case, so the slow start of two torch processes is paid once."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

import sparsecraft
from sparsecraft.errors import SparsecraftError
from tests.oneshot.tiny import calib_ids, tiny_llama

HOW = {"wanda": {"criterion": "wanda"}, "sparsegpt": {"method": "sparsegpt"},
       "owl": {"criterion": "wanda", "distribution": {"type": "owl", "lam": 0.1}}}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def all_cases(rank: int, world: int, out: str) -> dict:
    from safetensors.torch import save_file

    result: dict = {}
    # 1. every rank prunes the same model with its shard of the calibration batches; rank 0 also
    #    runs the single-process reference (same thread count) on a copy
    for how in HOW:
        model = tiny_llama(seed=0, layers=3)
        ref = copy.deepcopy(model)
        ids = calib_ids(7, 16)  # 7 batches of 1: rank 0 takes 4, rank 1 takes 3
        rep = sparsecraft.prune(model, 0.5, calib=ids, batch_size=1, progress=False, **HOW[how])
        save_file(_state(model), str(Path(out) / f"{how}-rank{rank}.safetensors"))
        if rank == 0:
            sparsecraft.prune(ref, 0.5, calib=ids, batch_size=1, progress=False, distributed=False, **HOW[how])
            save_file(_state(ref), str(Path(out) / f"{how}-single.safetensors"))
        result[how] = rep.info["data_parallel"]
    # 2. ranks started with a different model / calibration data: every rank raises
    for what in ("model", "calib"):
        model = tiny_llama(seed=rank if what == "model" else 0)
        n = 4 + (rank if what == "calib" else 0)
        try:
            sparsecraft.prune(model, 0.5, criterion="wanda", calib=calib_ids(n, 16), batch_size=1, progress=False)
            result[f"disagree-{what}"] = "no error"
        except SparsecraftError as e:
            result[f"disagree-{what}"] = str(e)
    # 3. a model folder, onloaded, data-parallel: only rank 0 writes the output folder
    src, dest = Path(out) / "src", Path(out) / "folder-dp"
    if rank == 0:
        tiny_llama(seed=0, layers=2).to(torch.bfloat16).save_pretrained(str(src))
    torch.distributed.barrier()
    rep = sparsecraft.prune(str(src), 0.5, criterion="wanda", calib=calib_ids(6, 16), batch_size=1, out=str(dest),
                            offload="disk", progress=False)
    result["folder"] = {"dp": rep.info["data_parallel"], "sparsity": rep.sparsity}
    return result
