"""The ``yoso`` command: argument parsing only; the work happens in training/, bench/ and the models."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path


def _add_train(sub) -> None:
    from .training.loop import ATTENTION_KINDS, TrainArgs

    p = sub.add_parser("train", help="train and evaluate a YosoForSequenceClassification (default: ListOps)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    for f in dataclasses.fields(TrainArgs):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", help=f"{f.name} (flag)")
        elif f.name == "attention":
            p.add_argument(flag, choices=ATTENTION_KINDS, default=default, help="attention of the model")
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            p.add_argument(flag, type=kind, default=default, help=f.name.replace("_", " "))


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="op and model benchmarks: table, JSON and PNG")
    p.add_argument("--what", choices=("ops", "models", "both"), default="ops")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--model-lengths", type=int, nargs="+", default=[512, 4096])
    p.add_argument("--num-hash", type=int, default=32, help="hash functions of the op benchmark")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output-dir", default="bench_results")


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="run a saved model on text from a file or stdin")
    p.add_argument("model_dir")
    p.add_argument("--input", default="-", help="text file, one example per line; '-' reads stdin")
    p.add_argument("--tokenizer", default=None, help="'bytes', 'listops' or a tokenizer directory "
                   "(default: the one recorded in the model's training args, else the model directory)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=3)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yoso", description="YOSO attention: train, benchmark, predict.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_bench(sub)
    _add_predict(sub)
    sub.add_parser("info", help="versions, threads and active fast paths")
    return parser


def _train(ns) -> int:
    from .training.loop import TrainArgs, train

    fields = {f.name for f in dataclasses.fields(TrainArgs)}
    args = TrainArgs(**{k: v for k, v in vars(ns).items() if k in fields})
    try:
        summary = train(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted: resumable checkpoint in {Path(args.output_dir) / 'last'} (use --resume)")
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def _bench(ns) -> int:
    import torch

    from .bench import models as model_bench
    from .bench import ops as op_bench
    from .training.plot import plot_benchmark

    torch.set_num_threads(ns.threads)
    out = Path(ns.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ns.what in ("ops", "both"):
        results = op_bench.run_op_benchmark(tuple(ns.lengths), num_hash=ns.num_hash, backward=not ns.no_backward,
                                            repeats=ns.repeats)  # fmt: skip
        print(op_bench.ratio_table(results))
        (out / "ops.json").write_text(json.dumps(op_bench.as_records(results), indent=2))
        plot_benchmark(op_bench.as_records(results), out / "ops.png")
    if ns.what in ("models", "both"):
        results = model_bench.run_model_benchmark(tuple(ns.model_lengths))
        print(model_bench.model_table(results))
        (out / "models.json").write_text(json.dumps(model_bench.as_records(results), indent=2))
        plot_benchmark(model_bench.as_records(results), out / "models.png")
    print(f"results in {out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "train":
            return _train(ns)
        if ns.command == "bench":
            return _bench(ns)
        if ns.command == "predict":
            from .predict import predict

            return predict(ns.model_dir, ns.input, ns.tokenizer, ns.top_k)
        from .predict import info

        return info()
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        print(f"yoso {ns.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
