"""Why a run's resident peak exceeds its live bytes: record every malloc and free of a `yoso` command, then replay
them in a fresh process (torch and the package imported, as in a training run) and read glibc's most held heap.
A replay makes the same calls in the same order, so a trace edited before replaying says what a change in the
allocation sequence would do (docs/studies.md, "Where the resident gap comes from"). Linux, glibc and gcc only.

    # record (a trace of ~20-30 MB for 20 MQAR steps):
    .venv/bin/python benchmarks/heap_trace.py record runs/heap/yoso.trace -- train --preset mqar ...
    # replay 5 times as recorded, then without the allocations of at most 1024 bytes that live across >= 3
    # allocations of >= 1 MB (the long-lived small objects), one JSON line each:
    .venv/bin/python benchmarks/heap_trace.py replay runs/heap/yoso.trace --runs 5
    .venv/bin/python benchmarks/heap_trace.py replay runs/heap/yoso.trace --runs 5 --drop-small 1024 --lived long
    # without the allocations of exactly 2 MB and 1.375 MB (the codes and the hash draw at 1024 tokens):
    .venv/bin/python benchmarks/heap_trace.py replay runs/heap/yoso.trace --runs 5 --drop-sizes 2097152 1441792
    # torch's posix_memalign(64, n) calls made as the plain mallocs of the memalign shim (yoso_attention/heap.py),
    # and only the allocations of >= 1 MB (the tensors; their replays vary by a few MB, not tens):
    .venv/bin/python benchmarks/heap_trace.py replay runs/heap/yoso.trace --runs 3 --unaligned
    .venv/bin/python benchmarks/heap_trace.py replay runs/heap/yoso.trace --runs 3 --drop-small 1048575
    # the gaps in the heap where it held the most, and what had filled each (the tensors, as the shim makes them):
    .venv/bin/python benchmarks/heap_trace.py holes runs/heap/yoso.trace

Identical replays differ by tens of MB (the heap the interpreter starts from is not the same twice): compare means
over several runs. Records are (address or id, bytes (-1: free), thread, alignment), 24 bytes each.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("heap_trace.c")
BUILD = Path(os.environ.get("HEAP_TRACE_BUILD", "runs/heap-trace-build"))
RECORD = np.dtype([("addr", "u8"), ("bytes", "i8"), ("tid", "i4"), ("align", "i4")])
BIG = 1 << 20  # allocations of at least this size are the clock of "long-lived"


def library(kind: str) -> Path:
    """The recorder (LD_PRELOAD) or the replayer, built from heap_trace.c when missing or older than it."""
    out = BUILD / f"libheaptrace_{kind}.so"
    if not out.exists() or out.stat().st_mtime < SOURCE.stat().st_mtime:
        BUILD.mkdir(parents=True, exist_ok=True)
        flag = {"record": "-DHEAP_TRACE_RECORD", "replay": "-DHEAP_TRACE_REPLAY"}[kind]
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", flag, "-o", str(out), str(SOURCE)], check=True)
    return out.resolve()


def record(out: Path, yoso_args: list[str]) -> None:
    """Run `yoso yoso_args` with the recorder preloaded, recording from the command's start (imports excluded)."""
    if os.environ.get("HEAP_TRACE_CHILD") != "1":
        env = dict(os.environ, LD_PRELOAD=str(library("record")), HEAP_TRACE_CHILD="1")
        sys.exit(subprocess.run([sys.executable, __file__, "record", str(out), "--", *yoso_args], env=env).returncode)
    tracer = ctypes.CDLL(os.environ["LD_PRELOAD"])
    from yoso_attention.cli import main as yoso

    tracer.heap_trace_enable(1)
    status = yoso(yoso_args)
    tracer.heap_trace_enable(0)
    out.parent.mkdir(parents=True, exist_ok=True)
    if tracer.heap_trace_dump(str(out).encode()) < 0:
        raise SystemExit(f"could not write {out}")
    sys.exit(status)


def with_ids(trace: np.ndarray) -> np.ndarray:
    """The trace with each allocation numbered 1, 2, ... and each free carrying its allocation's number (0: a
    free of something allocated before recording began); addresses are reused, numbers are not."""
    out = trace.copy()
    current: dict[int, int] = {}
    for i, (addr, size) in enumerate(zip(trace["addr"].tolist(), trace["bytes"].tolist())):
        if size > 0:
            current[addr] = i + 1
            out["addr"][i] = i + 1
        else:
            out["addr"][i] = current.pop(addr, 0)
    return out


def drop_small(trace: np.ndarray, max_bytes: int, lived: str) -> np.ndarray:
    """Without the allocations of at most max_bytes (and their frees) that are long-lived (alive across >= 3
    allocations of >= 1 MB, or never freed), short-lived, or all of them."""
    sizes, ids = trace["bytes"], trace["addr"]
    big_seen = np.cumsum(sizes >= BIG)  # clock: allocations of >= 1 MB so far
    born = {int(i): int(big_seen[k]) for k, i in enumerate(ids) if 0 < sizes[k] <= max_bytes}
    died = {int(ids[k]): int(big_seen[k]) for k in np.flatnonzero(sizes < 0) if int(ids[k]) in born}
    long_lived = {i for i, t in born.items() if died.get(i, 1 << 62) - t >= 3}
    drop = {"all": set(born), "long": long_lived, "short": set(born) - long_lived}[lived]
    return trace[~np.isin(ids, np.fromiter(drop, dtype=np.uint64, count=len(drop)))]


def drop_sizes(trace: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Without the allocations of exactly these sizes in bytes (e.g. an op's codes) and their frees."""
    dropped = trace["addr"][np.isin(trace["bytes"], sizes)]
    return trace[~np.isin(trace["addr"], dropped)]


def unaligned(trace: np.ndarray) -> np.ndarray:
    """Each aligned allocation as the plain malloc that the memalign shim (yoso_attention/csrc/memalign_shim.c)
    makes of it: bytes + alignment + 16."""
    out = trace.copy()
    aligned = (out["align"] > 16) & (out["bytes"] > 0)
    out["bytes"][aligned] += out["align"][aligned] + 16
    out["align"] = 0
    return out


def edited(path: Path, max_bytes: int | None, lived: str, sizes: list[int], plain: bool) -> np.ndarray:
    trace = with_ids(np.fromfile(path, dtype=RECORD))
    if max_bytes is not None:
        trace = drop_small(trace, max_bytes, lived)
    if sizes:
        trace = drop_sizes(trace, sizes)
    return np.ascontiguousarray(unaligned(trace) if plain else trace)


def replay(trace: np.ndarray, addrs: np.ndarray | None = None) -> tuple[float, float, int]:
    """Replay in this process: (most heap held, most bytes in use, the record at the most held); addrs (uint64,
    one per record) receives each allocation's address."""
    import torch  # noqa: F401  (the heap a training process starts from)
    import yoso_attention.training.loop  # noqa: F401

    replayer = ctypes.CDLL(str(library("replay")))
    result = (ctypes.c_double * 3)()
    where = None if addrs is None else addrs.ctypes.data_as(ctypes.c_void_p)
    status = replayer.heap_trace_replay(trace.ctypes.data_as(ctypes.c_void_p), ctypes.c_long(len(trace)),
                                        ctypes.c_long(int(trace["addr"].max())), result, where)  # fmt: skip
    if status != 0:
        raise SystemExit(f"replay failed ({status})")
    return result[0], result[1], int(result[2])


def replay_once(path: Path, max_bytes: int | None, lived: str, sizes: list[int], plain: bool) -> dict:
    held, in_use, _ = replay(edited(path, max_bytes, lived, sizes, plain))
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return {"trace": str(path), "drop_small": max_bytes, "lived": lived if max_bytes is not None else None,
            "drop_sizes": sizes or None, "unaligned": plain, "heap_mb": round(held / 2**20, 1), "in_use_mb": round(in_use / 2**20, 1),
            "vm_hwm_mb": round(hwm / 1024, 1)}  # fmt: skip


def holes(path: Path, min_mb: float) -> None:
    """Replay the trace's tensors (allocations of >= 1 MB, made as the memalign shim makes them) and print the gaps
    of at least min_mb between the chunks alive when the most heap was held, each with the chunks that had filled
    it and the one that bounds it from above: why a freed tensor's space was not reused."""
    trace = edited(path, BIG - 1, "all", [], True)
    addrs = np.zeros(len(trace), dtype=np.uint64)
    held, _, peak = replay(trace, addrs)
    ids, sizes, tids = trace["addr"].tolist(), trace["bytes"].tolist(), trace["tid"].tolist()
    born: dict[int, int] = {}
    chunks = []  # (address, bytes, allocated at record, freed at record)
    for i, (ident, size) in enumerate(zip(ids, sizes)):
        if size > 0:
            born[ident] = i
        elif ident in born:
            b = born.pop(ident)
            chunks.append((int(addrs[b]), sizes[b], b, i))
    chunks += [(int(addrs[b]), sizes[b], b, len(trace)) for b in born.values()]
    alive = sorted(c for c in chunks if c[2] <= peak < c[3])
    base, mb = alive[0][0], 2**20
    print(f"{path}: {held / mb:.1f} MB of heap held at record {peak} of {len(trace)}, "
          f"{sum(c[1] for c in alive) / mb:.1f} MB of tensors alive there")
    end = base
    for addr, size, b, d in alive:
        if addr - end >= min_mb * mb:
            print(f"gap {(end - base) / mb:.1f}-{(addr - base) / mb:.1f} MB ({(addr - end) / mb:.2f} MB), under "
                  f"{size} bytes allocated at record {b} by thread {tids[b]}, freed at {d}; filled before by:")
            for a2, s2, b2, d2 in sorted(c for c in chunks if c[3] <= peak and c[0] < addr and c[0] + c[1] > end):
                print(f"    {s2} bytes at {(a2 - base) / mb:.1f} MB, records {b2}-{d2}")
        end = max(end, addr + size)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run a yoso command and record its heap traffic")
    rec.add_argument("out", type=Path)
    rec.add_argument("yoso_args", nargs=argparse.REMAINDER, help="-- then the yoso command's arguments")
    rep = sub.add_parser("replay", help="replay a trace in fresh processes; one JSON line per run")
    rep.add_argument("trace", type=Path)
    rep.add_argument("--runs", type=int, default=1)
    rep.add_argument("--drop-small", type=int, default=None, metavar="BYTES",
                     help="leave out the allocations of at most BYTES (see --lived)")
    rep.add_argument("--lived", choices=("all", "long", "short"), default="all")
    rep.add_argument("--drop-sizes", type=int, nargs="+", default=[], metavar="BYTES",
                     help="leave out the allocations of exactly these sizes")
    rep.add_argument("--unaligned", action="store_true",
                     help="aligned allocations as plain mallocs of their size + alignment + 16 (as the shim makes)")
    rep.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # one replay, in this process
    gaps = sub.add_parser("holes", help="replay a trace's tensors once and show the heap's gaps at its peak")
    gaps.add_argument("trace", type=Path)
    gaps.add_argument("--min-mb", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.out, args.yoso_args[1:] if args.yoso_args[:1] == ["--"] else args.yoso_args)
    elif args.command == "holes":
        holes(args.trace, args.min_mb)
    elif args.once:
        print(json.dumps(replay_once(args.trace, args.drop_small, args.lived, args.drop_sizes, args.unaligned)),
              flush=True)  # fmt: skip
    else:
        extra = [] if args.drop_small is None else ["--drop-small", str(args.drop_small), "--lived", args.lived]
        extra += ["--drop-sizes", *map(str, args.drop_sizes)] if args.drop_sizes else []
        extra += ["--unaligned"] if args.unaligned else []
        for _ in range(args.runs):
            subprocess.run([sys.executable, __file__, "replay", str(args.trace), "--once", *extra], check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
