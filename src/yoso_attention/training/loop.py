"""Training and evaluation of YosoForSequenceClassification on ListOps or local text files.

One process or several under torchrun (DistributedDataParallel, gloo on CPU, nccl on CUDA; each rank
takes its own shard of every batch; metrics and checkpoints come from rank 0). The data order is a
function of (seed, step), so a run resumed from its last checkpoint (model, optimizer, scheduler, RNG
states, step) continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..models.yoso import YosoConfig, YosoForSequenceClassification
from .checkpoint import find_checkpoint, load_state, restore_rng, save_checkpoint
from .data import Split, load_splits
from .distributed import process_group
from .softmax import use_softmax_attention

ATTENTION_KINDS = ("yoso", "yoso-e", "softmax")


@dataclass
class TrainArgs:
    task: str = "listops"
    output_dir: str = "runs/listops"
    attention: str = "yoso"
    max_length: int = 512
    # listops
    train_examples: int = 6000
    eval_examples: int = 500
    test_examples: int = 500
    min_length: int = 16
    max_depth: int = 6
    leaf_prob: float = 0.35
    # text
    train_file: str | None = None
    eval_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    tokenizer: str = "bytes"
    num_classes: int = 2
    # model
    init_from: str | None = None
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    num_hash: int = 16
    hash_code_len: int = 6
    conv_window: int | None = None
    dropout: float = 0.1
    # optimisation
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 1200
    eval_every: int = 200
    save_every: int = 200
    seed: int = 0
    resume: bool = False
    cache_dir: str = field(default_factory=lambda: os.path.join(os.path.expanduser("~"), ".cache", "yoso_attention"))

    def validate(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention {self.attention!r}, expected one of {ATTENTION_KINDS}")
        if self.task not in ("listops", "text"):
            raise ValueError(f"unknown task {self.task!r}, expected 'listops' or 'text'")
        if self.task == "text" and not self.train_file:
            raise ValueError("--task text needs --train-file")
        for name in ("batch_size", "max_steps", "eval_every", "save_every", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def build_model(args: TrainArgs, vocab_size: int, pad_id: int, num_classes: int):
    if args.init_from:
        model = YosoForSequenceClassification.from_pretrained(args.init_from, num_labels=num_classes)
        if getattr(model.config, "attention_kind", None) == "softmax":
            use_softmax_attention(model)
        return model
    config = YosoConfig(
        vocab_size=vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads, intermediate_size=args.intermediate_size,
        max_position_embeddings=args.max_length, num_labels=num_classes, pad_token_id=pad_id, bos_token_id=None,
        eos_token_id=None, hidden_dropout_prob=args.dropout, use_expectation=args.attention == "yoso-e",
        num_hash=args.num_hash, hash_code_len=args.hash_code_len, conv_window=args.conv_window,
        use_fast_hash=args.hidden_size // args.num_heads >= args.hash_code_len,
    )  # fmt: skip
    model = YosoForSequenceClassification(config)
    model.config.attention_kind = args.attention
    if args.attention == "softmax":
        use_softmax_attention(model)
    return model


def _lr_lambda(args: TrainArgs):
    def fn(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return fn


@torch.no_grad()
def evaluate(model, split: Split, batch_size: int, rank: int, world: int) -> float:
    model.eval()
    correct = total = 0
    for input_ids, mask, labels in split.batches(batch_size, rank, world):
        preds = model(input_ids=input_ids, attention_mask=mask).logits.argmax(-1)
        correct += int((preds == labels).sum())
        total += len(labels)
    counts = torch.tensor([correct, total], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(counts)
    model.train()
    return float(counts[0] / counts[1]) if counts[1] else float("nan")


def _parse_record(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


class MetricsLog:
    """metrics.jsonl, one record per line; on resume, records after the checkpoint's step (and a line cut
    short by a kill) are dropped, so the file reads as if the run had never stopped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [r for r in map(_parse_record, path.read_text().splitlines()) if r and r["step"] <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def train(args: TrainArgs) -> dict:
    """Run a training job; returns the final summary (also written to summary.json)."""
    args.validate()
    with process_group() as (rank, world):
        return _train_in_group(args, rank, world)


def _train_in_group(args: TrainArgs, rank: int, world: int) -> dict:
    out_dir = Path(args.output_dir)
    last_dir, best_dir = out_dir / "last", out_dir / "best"
    state = None
    if args.resume:
        found = find_checkpoint(last_dir)
        if found is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {last_dir}; start without --resume")
        state = load_state(found)
        args.init_from = str(found)
    splits, vocab_size, pad_id, num_classes = load_splits(args)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = build_model(args, vocab_size, pad_id, num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(args))
    step, best = 0, -1.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best = state["step"], state["best_accuracy"]
        restore_rng(state)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    log = None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "args.json").write_text(json.dumps(asdict(args), indent=2))
        log = MetricsLog(out_dir / "metrics.jsonl", step if state else None)

    def checkpoint(path: Path) -> None:
        if rank == 0:
            save_checkpoint(path, model, optimizer, scheduler, step, {"best_accuracy": best})
        if world > 1:
            dist.barrier()

    model.train()
    train_split = splits["train"]
    tokens, start = 0, time.perf_counter()
    bar = tqdm(total=args.max_steps, initial=step, disable=rank != 0, desc=f"train {args.attention}", unit="step")
    try:
        while step < args.max_steps:
            input_ids, mask, labels = train_split.batch_at(step, args.batch_size, args.seed, rank, world)
            loss = ddp_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            tokens += int(mask.sum()) * world
            rate = tokens / (time.perf_counter() - start)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{rate:.0f}")
            if log:
                log.write({"step": step, "split": "train", "loss": loss.item(), "lr": scheduler.get_last_lr()[0]})
            if step % args.eval_every == 0 or step == args.max_steps:
                accuracy = evaluate(model, splits["eval"], args.batch_size, rank, world)
                if log:
                    log.write({"step": step, "split": "eval", "accuracy": accuracy})
                if accuracy > best:
                    best = accuracy
                    checkpoint(best_dir)
            if step % args.save_every == 0 or step == args.max_steps:
                checkpoint(last_dir)
    except KeyboardInterrupt:
        checkpoint(last_dir)
        bar.close()
        raise
    bar.close()
    test_accuracy = evaluate(model, splits["test"], args.batch_size, rank, world)
    summary = {
        "attention": args.attention,
        "steps": step,
        "best_eval_accuracy": best,
        "test_accuracy": test_accuracy,
        "majority_baseline": splits["test"].majority_rate(),
        "tokens_per_second": tokens / max(1e-9, time.perf_counter() - start),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "world_size": world,
    }
    if rank == 0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        from .plot import plot_metrics

        plot_metrics(out_dir / "metrics.jsonl", out_dir / "curves.png")
    return summary
