"""The markdown table of a study directory: one row per attention (runs OUT/<attention>-seed<n>/summary.json),
each column the mean over its seeds of one summary.json key; a key ending in "±" also shows the standard deviation.

    python3 benchmarks/study_summary.py OUT "test accuracy=test_accuracy±" "tokens/s=tokens_per_second" ...
"""

import json
import statistics
import sys
from pathlib import Path

WHOLE_NUMBERS = ("tokens_per_second", "peak_memory_mb")  # printed as 23,766 rather than to three decimals


def main(out: str, columns: list[str]) -> None:
    runs = {}
    for path in sorted(Path(out).glob("*-seed*/summary.json")):
        runs.setdefault(path.parent.name.rsplit("-seed", 1)[0], []).append(json.loads(path.read_text()))
    specs = [column.split("=", 1) for column in columns]
    print("| attention | seeds | " + " | ".join(label for label, _ in specs) + " |")
    print("|---|---|" + "---|" * len(specs))
    for name, rows in runs.items():
        cells = []
        for _, key in specs:
            values = [r[key.rstrip("±")] for r in rows]
            mean = statistics.mean(values)
            cell = f"{mean:,.0f}" if key in WHOLE_NUMBERS else f"{mean:.3f}"
            if key.endswith("±") and len(values) > 1:
                cell += f" ± {statistics.stdev(values):.3f}"
            cells.append(cell)
        print(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
