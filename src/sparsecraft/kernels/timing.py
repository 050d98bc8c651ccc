"""Side-by-side timing of several callables, block by block.

Why blocks and not interleaved single calls (a, b, c, a, b, c, ...): the calls being compared
run on *different thread pools* -- numpy's OpenBLAS, torch's OpenMP (which MKL, oneDNN and the
sparsecraft kernels share), scipy on the calling thread. After a call returns, its pool's worker
threads keep spin-waiting for a while (OpenBLAS for ~0.1 s, OpenMP for its spin count) and, on a
2-core machine, steal a core from whatever runs next. Interleaving single calls therefore times
each call *together with the previous call's spinners*; measured on the 2-core benchmark machine
it made a 0.9 ms sparse matvec read 4.5 ms.

:func:`time_blocks` runs, per round, every callable in turn (the order rotated by one each
round, so no call always follows the same neighbour): an optional pause (the previous pool's
spinners go to sleep), ``warmup`` untimed calls (this call's pool wakes up, its data is in
cache), then a block of timed calls. The result keeps every timing grouped by block;
:func:`block_median` (median of the per-block medians) is the robust summary and
:func:`fastest` the minimum over all calls. The comparison stays side by side: every callable
is measured in every round of the same process, so slow drifts of the machine hit all alike.

On a machine shared with other jobs, ``quiet`` makes each block wait for a quiet moment: the
pause is repeated (up to ``max_wait_s``) until the CPUs were at most ``quiet`` busy during it
(Linux ``/proc/stat``; this process sleeps meanwhile, so the busy time is other jobs and
still-spinning pools). :data:`WAITS` counts the extra pauses and the blocks that ran anyway
after ``max_wait_s``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

Blocks = dict[str, list[list[float]]]
WAITS = {"pauses": 0, "gave_up": 0}


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy_during(seconds: float) -> float | None:
    """Fraction of CPU time (all CPUs) that was busy while this thread slept ``seconds``."""
    a = _cpu_times()
    time.sleep(seconds)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


def _pause(pause_s: float, quiet: float | None, max_wait_s: float) -> None:
    if quiet is None:
        time.sleep(pause_s)
        return
    waited = 0.0
    while True:
        frac = busy_during(pause_s)
        if frac is None or frac <= quiet:
            return
        waited += pause_s
        WAITS["pauses"] += 1
        if waited >= max_wait_s:
            WAITS["gave_up"] += 1
            return


def _block_size(seconds: float, block: int, block_s: float | None) -> int:
    if block_s is None or seconds <= 0:
        return block
    return max(3, min(block, int(block_s / seconds)))


def time_blocks(
    calls: Mapping[str, Callable[[], object]],
    rounds: int = 5,
    block: int = 10,
    warmup: int = 2,
    pause_s: float = 0.0,
    block_s: float | None = None,
    quiet: float | None = None,
    max_wait_s: float = 5.0,
) -> Blocks:
    """Seconds of each timed call of each callable, as ``{name: [block, block, ...]}``.

    ``block``: timed calls per block; with ``block_s`` the block is shortened (to at least 3
    calls) so that it lasts about ``block_s`` seconds, judged from the last warm-up call.
    ``pause_s``: sleep before each block's warm-up (let the previous pool's threads sleep);
    with ``quiet`` (a busy fraction, e.g. 0.1) repeated until the machine was that quiet.
    """
    names = list(calls)
    out: Blocks = {k: [] for k in names}
    for r in range(rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            fn = calls[name]
            if pause_s > 0:
                _pause(pause_s, quiet, max_wait_s)
            last = 0.0
            for _ in range(max(1, warmup)):
                t0 = time.perf_counter()
                fn()
                last = time.perf_counter() - t0
            times = []
            for _ in range(_block_size(last, block, block_s)):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[name].append(times)
    return out


def block_median(blocks: list[list[float]]) -> float:
    """Median over blocks of each block's median (a preempted call or block does not move it)."""
    return statistics.median(statistics.median(b) for b in blocks)


def fastest(blocks: list[list[float]]) -> float:
    """The fastest single call of all blocks."""
    return min(min(b) for b in blocks)


def time_calls(
    calls: Mapping[str, Callable[[], object]],
    repeats: int = 20,
    warmup: int = 2,
    rounds: int = 5,
    pause_s: float = 0.0,
) -> dict[str, float]:
    """Median seconds per call of each callable: :func:`time_blocks` with ``rounds`` blocks of
    about ``repeats / rounds`` calls each, summarised with :func:`block_median`."""
    rounds = max(1, min(rounds, repeats))
    blocks = time_blocks(calls, rounds=rounds, block=max(1, -(-repeats // rounds)), warmup=warmup,
                         pause_s=pause_s)
    return {k: block_median(v) for k, v in blocks.items()}
