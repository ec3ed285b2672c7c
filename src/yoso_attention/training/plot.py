"""PNG plots: training curves of a run, and benchmark time / memory against n (log-log)."""

from __future__ import annotations

import json
from pathlib import Path


MISSING_MATPLOTLIB = "matplotlib is not installed; pip install 'yoso-attention[cli]' (or matplotlib) for plots"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_matplotlib() -> None:
    if not have_matplotlib():
        raise RuntimeError(MISSING_MATPLOTLIB)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) of a run's metrics.jsonl."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if r["split"] == "train"], [r for r in records if r["split"] == "eval"]


def smooth(values: list[float], alpha: float | None = None) -> list[float]:
    """Exponential moving average, debiased like TensorBoard's; alpha defaults to ~1/50 of the run."""
    alpha = alpha if alpha is not None else min(0.5, max(0.01, 20 / max(1, len(values))))
    out, avg = [], 0.0
    for t, v in enumerate(values, 1):
        avg = (1 - alpha) * avg + alpha * v
        out.append(avg / (1 - (1 - alpha) ** t))
    return out


def _run_args(run_dir: Path) -> dict:
    args_path = Path(run_dir) / "args.json"
    return json.loads(args_path.read_text()) if args_path.exists() else {}


def _attention_kind(args: dict) -> str:
    """The attention a run trained with, e.g. 'yoso', 'yoso after 200 YOSO-E steps' or 'yoso, tau 2->8 over 600
    steps'."""
    kind = args.get("attention", "?")
    if warmup := args.get("expectation_warmup_steps"):
        kind = f"{kind} after {warmup} YOSO-E steps"
    if tau_steps := args.get("hash_code_len_warmup_steps"):
        kind = f"{kind}, tau {args.get('hash_code_len_start')}->{args.get('hash_code_len')} over {tau_steps} steps"
    return kind


def run_label(run_dir: Path) -> str:
    """'attention, seed N' from the run's args.json (the directory name when absent)."""
    args = _run_args(run_dir)
    if not args:
        return Path(run_dir).name
    return f"{_attention_kind(args)}, seed {args.get('seed', '?')}"


BASELINE_STYLES = {"majority": ("--", "majority class"), "first_operator": (":", "first-operator rule"),
                   "chance": ("--", "chance (a value of the sequence)")}
SEQUENCE_BASELINE_STYLES = {"sequence_chance": ("--", "chance (a permutation of the values)")}
SEED_STYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)))


def run_styles(run_dirs: list[Path], colors: list[str]) -> list[tuple[str, object]]:
    """(color, line style) per run: one color per attention kind, a line style per run of the same kind, so
    that seeds of one attention read as a family."""
    kinds = [_attention_kind(args) if (args := _run_args(run_dir)) else Path(run_dir).name for run_dir in run_dirs]
    palette = {kind: colors[i % len(colors)] for i, kind in enumerate(dict.fromkeys(kinds))}
    return [(palette[kind], SEED_STYLES[kinds[:i].count(kind) % len(SEED_STYLES)]) for i, kind in enumerate(kinds)]


def _baseline_lines(ax, evals_per_run: list[list[dict]], styles: dict) -> None:
    """Gray lines at the trivial classifiers' accuracies, at their mean over runs (runs with different seeds
    evaluate on different generated data)."""
    for name, (style, text) in styles.items():
        rates = [evals[-1][name] for evals in evals_per_run if evals and name in evals[-1]]
        if rates:
            label = text if max(rates) == min(rates) else f"{text} (mean of {len(rates)} runs)"
            ax.axhline(sum(rates) / len(rates), color="gray", ls=style, lw=1, label=label)


def plot_runs(run_dirs: list[Path], png_path: Path, labels: list[str] | None = None) -> None:
    """Training loss (raw, faint, and smoothed) and eval accuracy of one or more runs, with the trivial
    baselines (majority class; for ListOps the first-operator rule; for MQAR chance) as gray lines; for MQAR a
    third panel with the fraction of sequences whose every query is right."""
    plt = _pyplot()
    metrics = [read_metrics(run_dir) for run_dir in run_dirs]
    per_sequence = any("sequence_accuracy" in r for _, evals in metrics for r in evals)
    fig, axes = plt.subplots(1, 3 if per_sequence else 2, figsize=(19 if per_sequence else 13, 4))
    ax_loss, ax_acc = axes[0], axes[1]
    styles = run_styles(run_dirs, plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for i, (run_dir, (train, evals)) in enumerate(zip(run_dirs, metrics)):
        (color, style), label = styles[i], (labels[i] if labels else run_label(run_dir))
        steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
        ax_loss.plot(steps, losses, color=color, lw=0.5, alpha=0.2)
        ax_loss.plot(steps, smooth(losses), color=color, ls=style, lw=1.5, label=label)
        for ax, key in ((ax_acc, "accuracy"), *(((axes[2], "sequence_accuracy"),) if per_sequence else ())):
            points = [(r["step"], r[key]) for r in evals if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], color=color, ls=style, marker="o", ms=3,
                    label=label)  # fmt: skip
    evals_per_run = [evals for _, evals in metrics]
    _baseline_lines(ax_acc, evals_per_run, BASELINE_STYLES)
    ax_loss.set(xlabel="step", ylabel="training loss", title="training loss (faint: raw, bold: smoothed)")
    ax_acc.set(xlabel="step", ylabel="eval accuracy", title="evaluation accuracy" + (" per query" if per_sequence else ""))
    if per_sequence:
        _baseline_lines(axes[2], evals_per_run, SEQUENCE_BASELINE_STYLES)
        axes[2].set(xlabel="step", ylabel="eval sequence accuracy", title="sequences with every query right")
        axes[2].legend(fontsize=7, loc="upper left")
    ax_acc.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1) if not per_sequence else None)
    for ax in axes:
        ax.grid(alpha=0.3)
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
