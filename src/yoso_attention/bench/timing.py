"""Timing and peak-memory measurement shared by the benchmarks.

Peak memory is the process's resident set size (RSS) sampled every millisecond by a background thread,
minus the RSS before the call: it counts torch, numpy (numba scratch) and allocator overheads alike.
"""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the (monotonic) max RSS
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Context manager: ``.peak`` is the largest RSS growth (bytes) seen while inside."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self._base)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self._base = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() - self._base)


def measure(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> tuple[float, int]:
    """(median seconds, peak RSS growth in bytes) of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    with PeakRSS() as mem:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times), mem.peak
