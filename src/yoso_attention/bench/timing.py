"""Timing and peak-memory measurement shared by the benchmarks.

Peak memory is the process's resident set size (RSS) sampled every millisecond by a background thread,
minus the RSS before the call: it counts torch, numpy (numba scratch) and allocator overheads alike.
glibc keeps freed memory for reuse, which hides later allocations from RSS and, fragmented, inflates it: each
measurement starts with ``malloc_trim``, and ``exact_rss_mode`` makes every allocation above 64 KB its own
mapping, returned on free. It must be set before the measured work allocates anything, since heap chunks freed
earlier stay in the heap and are reused, so the benchmarks measure memory in a fresh process
(``in_fresh_process``) after timing in their own: the mode's page faults would slow the timings.
"""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable

from ..heap import libc, release_free_heap

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
        release_free_heap()  # so that reusing freed pages shows up in RSS again
        self._base = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() - self._base)


def exact_rss_mode() -> bool:
    """Ask glibc to map allocations above 64 KB individually (and unmap them on free). False if not glibc."""
    lib = libc()
    if lib is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(lib.mallopt(m_mmap_threshold, 1 << 16)) and bool(lib.mallopt(m_trim_threshold, 1 << 16))


def median_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, slow: float = 5.0) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls; a call slower
    than ``slow`` seconds in warm-up is timed once (its noise is small next to its length)."""
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        if time.perf_counter() - start > slow:
            repeats = 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak RSS growth during one call of ``fn()`` (in a process whose work began after ``exact_rss_mode()``)."""
    with PeakRSS() as mem:
        result = fn()  # held until the last reading: a call's output is part of its peak, however short the call
    del result
    return mem.peak


def allocation_changes(fn: Callable[[], object]) -> list[int]:
    """The torch allocations (+bytes) and frees (-bytes) that fn() makes, in order (torch.profiler's memory
    timeline)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, with_stack=True) as prof:
        fn()
    signs = {Action.CREATE: 1, Action.DESTROY: -1}
    return [signs[action] * size for _, action, _, size in MemoryProfile(prof.profiler.kineto_results).timeline
            if action in signs]  # fmt: skip


def live_tensor_peak(fn: Callable[[], object]) -> int:
    """The largest total of torch allocations alive at once during fn(), in bytes: what tensors need, which neither
    the allocator's heap nor a runtime's pages blur."""
    return max(itertools.accumulate(allocation_changes(fn), initial=0))


def in_fresh_process(fn: Callable[..., object], *args) -> object:
    """``fn(*args)`` in a new interpreter (spawned, not forked: a fork inherits this process's heap) with this
    process's torch threads and ``exact_rss_mode`` on before ``fn`` allocates anything: where memory is measured.
    ``fn`` must be a module-level function, its arguments and result picklable."""
    import torch

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_call_in_exact_mode, torch.get_num_threads(), fn, *args).result()


def _call_in_exact_mode(threads: int, fn: Callable[..., object], *args) -> object:
    import torch

    torch.set_num_threads(threads)
    exact_rss_mode()
    return fn(*args)
