"""ListOps at LRA-like length (up to 2000 tokens): YOSO sampling, YOSO-E and softmax on one budget.

    python benchmarks/listops_compare.py --output-dir runs/compare [--max-steps 600]

Runs ``yoso train`` three times with identical data, model size, steps and seed, then prints a markdown
table of test accuracy, tokens per second and peak memory (also written to compare.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

COMMON = ["--max-length", "2000", "--min-length", "500", "--max-depth", "10", "--train-examples", "3000",
          "--eval-examples", "300", "--test-examples", "300", "--batch-size", "16", "--hidden-size", "64",
          "--num-layers", "2", "--num-heads", "4", "--intermediate-size", "128", "--eval-every", "100",
          "--save-every", "100", "--hash-code-len", "6"]  # fmt: skip
RUNS = {"yoso": ["--attention", "yoso", "--num-hash", "32"], "yoso-e": ["--attention", "yoso-e"],
        "softmax": ["--attention", "softmax"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/compare")
    parser.add_argument("--max-steps", type=int, default=600)
    ns = parser.parse_args()
    out = Path(ns.output_dir)
    rows = ["| attention | test accuracy | majority baseline | tokens/s | peak memory (MB) |", "|---|---|---|---|---|"]
    for name, extra in RUNS.items():
        run_dir = out / name
        cmd = [sys.executable, "-m", "yoso_attention.cli", "train", *COMMON, *extra, "--max-steps",
               str(ns.max_steps), "--output-dir", str(run_dir)]  # fmt: skip
        subprocess.run(cmd, check=True)
        s = json.loads((run_dir / "summary.json").read_text())
        rows.append(f"| {name} | {s['test_accuracy']:.3f} | {s['majority_baseline']:.3f} | "
                    f"{s['tokens_per_second']:.0f} | {s['peak_memory_mb']:.0f} |")  # fmt: skip
    table = "\n".join(rows)
    (out / "compare.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
