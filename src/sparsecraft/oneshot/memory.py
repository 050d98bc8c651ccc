"""Peak resident memory (RSS) of this process during a block of code.

A background thread samples ``/proc/self/statm`` every ``interval`` seconds; the peak also
includes the RSS at entry and exit. Where ``/proc`` is missing it falls back to
``resource.getrusage`` (the process-lifetime peak, an upper bound).
"""

from __future__ import annotations

import os
import resource
import threading
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> int | None:
    """Resident set size of this process in bytes (None without /proc)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.peak_mb``."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = current_rss()
        if rss is not None and rss > self.peak:
            self.peak = rss

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRSS:
        self._sample()
        if current_rss() is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if self.peak == 0:  # no /proc: lifetime peak (KiB on Linux)
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20
