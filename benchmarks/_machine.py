"""Machine-level measurements the CPU benchmarks share: memory read bandwidth, and one competing
busy process for the "contended" columns."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import torch


def read_bandwidth(threads: int, mib: int = 512, repeats: int = 7) -> float:
    """Bytes per second of a streaming read (``torch.sum`` over a ``mib`` MiB float32 tensor that
    does not fit any cache) with ``threads`` torch threads; the best of ``repeats``."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(mib * 2**20 // 4)
        x.sum()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - t0)
        return x.numel() * 4 / best
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def busy_process():
    """One other process spinning on a core while the block runs (killed by its pid after)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    time.sleep(0.5)
    try:
        yield proc.pid
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
