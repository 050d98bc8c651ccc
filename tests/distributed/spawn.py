"""Run a function on N local processes with a gloo process group, never hanging: a free port
chosen at run time, a deadline on the whole run (the processes are killed past it), results
returned through files (JSON) in a temporary folder."""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch.multiprocessing as mp

#: seconds for a whole multi-process test; under pytest's 300 s per-test timeout; the CI machine has 2 shared cores
TIMEOUT = float(os.environ.get("SPARSECRAFT_SPAWN_TIMEOUT", "240"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, out: str, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    result: dict[str, Any]
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=__import__("datetime").timedelta(seconds=TIMEOUT))
        try:
            result = {"ok": fn(rank, world, *args)}
        finally:
            dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001 -- reported to the test through the file
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result, default=str))


def run_ranks(fn: Callable, tmp_path: Path, *args: Any, world: int = 2) -> list[dict[str, Any]]:
    """``fn(rank, world, *args)`` on ``world`` processes; its JSON-able return value (or the
    error it raised) per rank."""
    out = tmp_path / "ranks"
    out.mkdir(exist_ok=True)
    ctx = mp.start_processes(_entry, args=(fn, world, free_port(), str(out), args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"multi-process test did not finish within {TIMEOUT:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
