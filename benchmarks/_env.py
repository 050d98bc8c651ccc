"""The environment lines every benchmark writes into its results file, and the atomic write.

``command(script)`` is the command exactly as run (the docstrings give the recommended flock
wrapper), ``environment(threads)`` names date, torch, CPU, threads and the state of the C++
kernels, ``load_line(start, end)`` the load average around the run (the machine is shared).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path

import torch


def command(script: str) -> str:
    """``python benchmarks/<script> <the arguments of this process>``, shell-quoted."""
    return shlex.join(["python", f"benchmarks/{script}", *sys.argv[1:]])


def load() -> float:
    """1-minute load average."""
    return os.getloadavg()[0]


def environment(threads: int | str) -> str:
    """Date, torch version, CPU, threads and the C++ kernels' build status, on one line."""
    from sparsecraft.kernels import extension_status

    return (f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
            f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), {threads} threads; "
            f"C++ kernels: {extension_status()[1]}.")


def load_line(start: float, end: float) -> str:
    return (f"Load average (1 min) at start / end: {start:.2f} / {end:.2f} (the 2-core machine is "
            "shared with other workers, so absolute times are noisy).")


def header(title: str, script: str, threads: int | str, note: str = "") -> list[str]:
    """Title, command and environment lines (markdown, two trailing spaces = line break)."""
    return [f"# {title}", "", f"Command: `{command(script)}`  ", environment(threads)
            + (f" {note}" if note else "") + "  "]


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`sparsecraft.atomic.write_text`) and say so."""
    from sparsecraft.atomic import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)
    print(f"wrote {path}")
