"""Mean and spread of JSON-line results grouped by fields: peak_heap.py's (label) or heap_trace.py replay's (trace,
drop_small, lived, drop_sizes, unaligned) lines, from one or more files.

    python3 benchmarks/heap_summary.py runs/peak-heap.jsonl [more.jsonl ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def main(paths: list[str]) -> None:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for path in paths:
        for line in open(path):
            if line.strip():
                row = json.loads(line)
                key = (row["label"],) if "label" in row else (row["trace"], row["drop_small"], row["lived"],
                                                               str(row.get("drop_sizes")),
                                                               "unaligned" if row.get("unaligned") else "")
                groups[key].append(row)
    for key, rows in groups.items():
        fields = ("rss_mb", "max_allocated_mb") if "label" in rows[0] else ("heap_mb", "in_use_mb", "vm_hwm_mb")
        parts = []
        for field in fields:
            values = [r[field] for r in rows]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            parts.append(f"{field} {statistics.mean(values):7.1f} ± {spread:5.1f} [{min(values):.0f}-{max(values):.0f}]")
        print(f"{' '.join(str(k) for k in key):60s} n={len(rows):2d}  " + "  ".join(parts))


if __name__ == "__main__":
    main(sys.argv[1:])
