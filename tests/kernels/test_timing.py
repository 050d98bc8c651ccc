"""Block-wise timing: rounds, rotated order, warm-up, block sizes, the summaries."""

from __future__ import annotations

import time

import pytest

from sparsecraft.kernels.timing import block_median, fastest, time_blocks, time_calls


def test_blocks_rotate_order_and_count_calls():
    log: list[str] = []
    calls = {k: (lambda k=k: log.append(k)) for k in "abc"}
    out = time_blocks(calls, rounds=3, block=4, warmup=2)
    assert {k: [len(b) for b in v] for k, v in out.items()} == {k: [4, 4, 4] for k in "abc"}
    per_block = 2 + 4  # warm-up + timed, each callable's block runs contiguously
    firsts = [log[i] for i in range(0, len(log), per_block)]
    assert firsts == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(set(log[i:i + per_block])) == 1 for i in range(0, len(log), per_block))


def test_slow_calls_get_shorter_blocks():
    out = time_blocks({"slow": lambda: time.sleep(0.01), "fast": lambda: None},
                      rounds=1, block=50, warmup=1, block_s=0.03)
    assert len(out["slow"][0]) == 3  # 0.03 s / 0.01 s, at least 3
    assert len(out["fast"][0]) == 50


def test_pause_is_applied_before_each_block():
    t0 = time.perf_counter()
    time_blocks({"a": lambda: None, "b": lambda: None}, rounds=2, block=1, pause_s=0.02)
    assert time.perf_counter() - t0 >= 4 * 0.02


def test_summaries():
    blocks = [[1.0, 2.0, 100.0], [2.0, 3.0, 4.0], [100.0, 100.0, 100.0]]
    assert block_median(blocks) == 3.0  # medians 2, 3, 100
    assert fastest(blocks) == 1.0


def test_time_calls_orders_a_slow_and_a_fast_call():
    t = time_calls({"slow": lambda: time.sleep(0.002), "fast": lambda: None}, repeats=6, rounds=2)
    assert t["fast"] < t["slow"]
    # a sleep never returns early, so the median is at least 2 ms in seconds; no upper bound: a loaded
    # machine oversleeps (14 ms seen at load 20), and CI must pass on every run
    assert t["slow"] >= 0.0019


def test_busy_during_sees_a_busy_thread():
    import threading

    from sparsecraft.kernels.timing import busy_during

    idle = busy_during(0.05)
    if idle is None:
        pytest.skip("no /proc/stat here")
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    t = threading.Thread(target=spin)
    t.start()
    try:
        busy = busy_during(0.1)
    finally:
        stop.set()
        t.join()
    import os

    assert busy is not None and busy >= 0.5 / (os.cpu_count() or 1)  # one CPU fully busy


def test_quiet_wait_gives_up_after_max_wait(monkeypatch):
    from sparsecraft.kernels import timing

    monkeypatch.setattr(timing, "busy_during", lambda s: 1.0)  # never quiet
    monkeypatch.setitem(timing.WAITS, "gave_up", 0)
    out = time_blocks({"a": lambda: None}, rounds=2, block=1, pause_s=0.001, quiet=0.1, max_wait_s=0.003)
    assert len(out["a"]) == 2 and timing.WAITS["gave_up"] == 2
