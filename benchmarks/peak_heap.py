"""What a process's peak resident memory is made of: runs one `yoso` command in this process while a thread samples
the resident set and glibc's heap statistics (mallinfo2) every 2 ms: the most bytes allocated at once (in the heap
or mapped on their own: the live memory, whatever the allocator keeps), and at the resident set's maximum the
heap's size, the bytes in use in it, the bytes free in it (held by the allocator) and what is mapped on its own.
Linux with glibc only. Prints one JSON line after the command's own output.

    .venv/bin/python benchmarks/peak_heap.py LABEL -- train --preset mqar --max-length 1024 ...

Peak RSS of whole runs varies by tens of MB between identical runs of the same attention, because the heap's
free space does; the most bytes allocated at once moves far less (docs/studies.md, "Compiled CPU kernels").
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import time

_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _sample(mallinfo2, peak: dict, period: float = 0.002) -> None:
    while True:
        rss, info = _rss_mb(), mallinfo2()
        live = (info.uordblks + info.hblkhd) / 2**20  # allocated bytes, in the heap or mapped on their own
        peak["max_allocated_mb"] = max(peak["max_allocated_mb"], live)
        if rss > peak["rss_mb"]:
            peak.update(rss_mb=rss, heap_mb=info.arena / 2**20, heap_in_use_mb=info.uordblks / 2**20,
                        heap_free_mb=info.fordblks / 2**20, mapped_mb=info.hblkhd / 2**20)  # fmt: skip
        time.sleep(period)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: peak_heap.py LABEL -- YOSO_ARGS...")
    label, command = argv[0], argv[2:]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    peak = {"rss_mb": 0.0, "max_allocated_mb": 0.0}
    threading.Thread(target=_sample, args=(libc.mallinfo2, peak), daemon=True).start()
    from yoso_attention.cli import main as yoso

    status = yoso(command)
    print(json.dumps({"label": label, **{k: round(v, 1) for k, v in peak.items()}}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
