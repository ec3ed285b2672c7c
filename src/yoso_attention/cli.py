"""The ``yoso`` command: argument parsing only; the work happens in training/, bench/ and the models."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def _add_train(sub) -> None:
    from .training.args import train_fields

    p = sub.add_parser("train", help="train a classifier (default: ListOps) or a masked language model",
                       description="Train a YOSO (or softmax baseline) classifier or masked language model; every "
                       "run is resumable.")  # fmt: skip
    groups = {}
    for group, name, default, help_text, choices, kind, nargs in train_fields():
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        p_group = groups[group]
        flag = "--" + name.replace("_", "-")
        shown = "" if default is None else f" (default: {default})"
        if kind in ("bool", bool):  # defaults are left out (SUPPRESS) so that a preset can tell what was given
            p_group.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
            continue
        parse = {"int": int, "float": float}.get(str(kind).split(" ")[0], str)
        p_group.add_argument(flag, type=parse, choices=choices, nargs=nargs, default=argparse.SUPPRESS,
                             help=help_text + shown)  # fmt: skip


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="op and model benchmarks: table, JSON and PNG",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--what", choices=("ops", "models", "both"), default="ops",
                   help="ops: yoso_lsh / yoso_expectation vs SDPA and dense YOSO-E; models: 12-layer base models")
    p.add_argument("--lengths", type=_positive_int, nargs="+", default=[512, 1024, 2048, 4096],
                   help="sequence lengths of the op benchmark, in tokens")
    p.add_argument("--heads", type=_positive_int, default=12,
                   help="op benchmark: batch x heads (the ops flatten them; the LRA study's is 32 x 4 = 128)")
    p.add_argument("--head-dim", type=_positive_int, default=64, help="op benchmark: head dimension")
    p.add_argument("--hash-code-len", type=_positive_int, default=9, help="op benchmark: tau, bits per hash code")
    p.add_argument("--model-lengths", type=_positive_int, nargs="+", default=[512, 4096],
                   help="sequence lengths of the model benchmark, in tokens")
    p.add_argument("--model-passes", nargs="+", choices=("eval", "train"), default=["eval"],
                   help="eval: no_grad forward; train: forward + backward of last_hidden_state.sum()")
    p.add_argument("--model-batch", type=_positive_int, default=1, help="sequences per call of the model benchmark")
    p.add_argument("--num-hash", type=_positive_int, default=32, help="hash functions of the op benchmark")
    p.add_argument("--repeats", type=_positive_int, default=3,
                   help="timed calls per measurement (the median is reported)")
    p.add_argument("--no-backward", action="store_true", help="op benchmark: forward only")
    p.add_argument("--threads", type=_positive_int, default=2, help="torch and numba threads")
    p.add_argument("--output-dir", default="bench_results", help="directory for the JSON and PNG results")  # fmt: skip


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="run a saved model on text: class scores, or <mask> fills for a masked LM")
    p.add_argument("model_dir", help="a model directory written by yoso train (best/ or last/) or save_pretrained")
    p.add_argument("--input", default="-", help="text file, one example per line; '-' reads stdin (default)")
    p.add_argument("--tokenizer", default=None, help="'bytes', 'listops' or a tokenizer directory "
                   "(default: the one recorded in the model's training args, else the model directory)")
    p.add_argument("--top-k", type=int, default=3, help="predictions shown per example or per <mask> (default: 3)")  # fmt: skip


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="overlay the curves of several runs (e.g. yoso vs yoso-e vs softmax) in one PNG")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by yoso train")
    p.add_argument("--output", default="curves.png", help="PNG to write (default: curves.png)")
    p.add_argument("--labels", nargs="+", default=None,
                   help="one legend label per run (default: attention and seed from each run's args.json)")  # fmt: skip


def _add_extend(sub) -> None:
    p = sub.add_parser("extend", help="copy a checkpoint with its position table repeated to a longer --max-length",
                       description="Lengthen a YOSO, RoBERTa or BERT checkpoint for continued MLM pretraining: the "
                       "trained position embeddings are repeated up to the new length (the YOSO authors' and "
                       "Longformer's scheme), every other weight is copied unchanged.")  # fmt: skip
    p.add_argument("src", help="save_pretrained directory of a yoso, roberta or bert model")
    p.add_argument("dst", help="new directory to write (must not exist)")
    p.add_argument("--max-length", type=int, required=True, help="positions of the new model, in tokens")
    p.add_argument("--hash-code-len", type=int, default=None,
                   help="tau of the new YOSO model (default: the source's plus log2 of the length ratio, rounded: "
                   "one more bit per doubling keeps the distractors' collisions where they were)")  # fmt: skip
    p.add_argument("--num-hash", type=int, default=None,
                   help="m of the new YOSO model (default: the source's, raised if the own key would miss under "
                   "every hash more often than 1e-3 at the new tau)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="yoso", description="YOSO attention: train, benchmark, predict.")
    parser.add_argument("--version", action="version", version=f"yoso-attention {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_bench(sub)
    _add_predict(sub)
    _add_plot(sub)
    _add_extend(sub)
    sub.add_parser("info", help="versions, threads and active fast paths")
    return parser


def _explicit_train_args(ns) -> dict:
    """The TrainArgs fields given on the command line (their defaults are suppressed)."""
    from .training.args import TrainArgs

    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    return {k: v for k, v in vars(ns).items() if k in fields}


def _train(ns) -> int:
    from .training.args import resolve_args
    from .training.distributed import is_first_rank
    from .training.loop import train

    args = resolve_args(_explicit_train_args(ns))
    try:
        summary = train(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted: resumable checkpoint in {Path(args.output_dir) / 'last'} (use --resume)")
        return 130
    if is_first_rank():
        print(json.dumps(summary, indent=2))
        print(summary_line(summary))
    return 0


def summary_line(summary: dict) -> str:
    """The run's result in one line: test accuracy (and perplexity or sequence accuracy) beside the trivial
    baselines, and the training throughput."""
    parts = [f"test accuracy {summary['test_accuracy']:.3f}"]
    if "test_sequence_accuracy" in summary:
        parts.append(f"sequence accuracy {summary['test_sequence_accuracy']:.3f}")
    if "test_perplexity" in summary:
        parts.append(f"perplexity {summary['test_perplexity']:.2f}")
    baselines = [f"{key.removesuffix('_baseline').replace('_', ' ')} {value:.3f}"
                 for key, value in summary.items() if key.endswith("_baseline")]  # fmt: skip
    against = f" (baselines: {', '.join(baselines)})" if baselines else ""
    return f"{', '.join(parts)}{against}; trained at {summary['tokens_per_second']:,.0f} tokens/s"


def _bench(ns) -> int:
    import torch

    from .bench import models as model_bench
    from .bench import ops as op_bench
    from .training.plot import MISSING_MATPLOTLIB, have_matplotlib, plot_benchmark

    if not have_matplotlib():
        print(f"notice: {MISSING_MATPLOTLIB}; the benchmark PNGs are skipped", file=sys.stderr)
    torch.set_num_threads(ns.threads)
    out = Path(ns.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ns.what in ("ops", "both"):
        results = op_bench.run_op_benchmark(tuple(ns.lengths), heads=ns.heads, d=ns.head_dim, num_hash=ns.num_hash,
                                            tau=ns.hash_code_len, backward=not ns.no_backward,
                                            repeats=ns.repeats)  # fmt: skip
        print(op_bench.ratio_table(results))
        (out / "ops.json").write_text(json.dumps(op_bench.as_records(results), indent=2))
        if have_matplotlib():
            plot_benchmark(op_bench.as_records(results), out / "ops.png")
    if ns.what in ("models", "both"):
        results = model_bench.run_model_benchmark(tuple(ns.model_lengths), repeats=ns.repeats,
                                                  passes=tuple(ns.model_passes), batch=ns.model_batch)  # fmt: skip
        print(model_bench.model_table(results))
        (out / "models.json").write_text(json.dumps(model_bench.as_records(results), indent=2))
        if have_matplotlib():
            plot_benchmark(model_bench.as_records(results), out / "models.png")
    print(f"results in {out}/")
    return 0


def _plot(ns) -> int:
    from .training.plot import plot_runs, require_matplotlib

    require_matplotlib()
    runs = [Path(d) for d in ns.run_dirs]
    for run in runs:
        if not (run / "metrics.jsonl").exists():
            raise FileNotFoundError(f"{run}: no metrics.jsonl; expected a run directory written by yoso train")
    if ns.labels is not None and len(ns.labels) != len(runs):
        raise ValueError(f"--labels has {len(ns.labels)} labels for {len(runs)} runs; expected one per run")
    plot_runs(runs, Path(ns.output), ns.labels)
    print(f"wrote {ns.output}")
    return 0


def _quiet_transformers() -> None:
    """No "Loading weights" / "Writing model shards" bars inside our own progress display."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """The command line (argv None: sys.argv's, and `yoso train` reruns itself under the memalign shim where it
    applies, see heap.py; a list, as from Python: this process as it is)."""
    if argv is None and sys.argv[1:2] == ["train"]:
        from .heap import run_under_memalign_shim

        run_under_memalign_shim(sys.argv[1:])
    ns = build_parser().parse_args(argv)
    _quiet_transformers()
    try:
        if ns.command == "train":
            return _train(ns)
        if ns.command == "bench":
            return _bench(ns)
        if ns.command == "plot":
            return _plot(ns)
        if ns.command == "extend":
            from .models.yoso.convert import extend_checkpoint

            print(f"wrote {ns.dst}: {extend_checkpoint(ns.src, ns.dst, ns.max_length, ns.hash_code_len, ns.num_hash)}")
            return 0
        if ns.command == "predict":
            from .predict import predict

            return predict(ns.model_dir, ns.input, ns.tokenizer, ns.top_k)
        from .predict import info

        return info()
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError, OSError) as exc:
        print(f"yoso {ns.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
