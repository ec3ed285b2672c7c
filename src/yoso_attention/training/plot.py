"""PNG plots: training curves of a run, and benchmark time / memory against n (log-log)."""

from __future__ import annotations

import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(metrics_path: Path, png_path: Path) -> None:
    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8)
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    ax_acc.plot([r["step"] for r in evals], [r["accuracy"] for r in evals], marker="o")
    ax_acc.set(xlabel="step", ylabel="eval accuracy", title="accuracy")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def plot_benchmark(records: list[dict], png_path: Path, x: str = "n") -> None:
    """One line per (method, pass): time and peak memory against n."""
    plt = _pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    keys = sorted({(r["method"], r.get("pass_", "fwd")) for r in records})
    for method, pass_ in keys:
        rows = sorted((r for r in records if r["method"] == method and r.get("pass_", "fwd") == pass_),
                      key=lambda r: r[x])  # fmt: skip
        label = f"{method} {pass_}" if "pass_" in records[0] else method
        ax_t.plot([r[x] for r in rows], [r["seconds"] for r in rows], marker="o", label=label)
        ax_m.plot([r[x] for r in rows], [max(r["peak_mb"], 1e-1) for r in rows], marker="o", label=label)
    for ax, ylabel in ((ax_t, "seconds"), (ax_m, "peak memory (MB)")):
        ax.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel=ylabel)
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
