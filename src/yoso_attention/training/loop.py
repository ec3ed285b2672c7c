"""Training and evaluation of YosoForSequenceClassification on ListOps or local text files.

One process or several under torchrun (DistributedDataParallel, gloo on CPU, nccl on CUDA: ``--device``; each rank
takes its own shard of every batch; metrics and checkpoints come from rank 0). The data order is a
function of (seed, step), so a run resumed from its last checkpoint (model, optimizer, scheduler, RNG
states, step) continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import random
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..heap import memalign_shim_preloaded, release_free_heap, reserve_matmul_buffers
from ..hub import local_dir
from ..ops.hashing import padded_dim
from ..models.yoso import YosoConfig, YosoForMaskedLM, YosoForSequenceClassification, YosoForTokenClassification
from ..models.yoso.convert import extend_checkpoint
from .args import HASHING_FIELDS, TrainArgs
from .checkpoint import find_checkpoint, load_state, restore_rng, save_checkpoint
from .data import MlmSplit, Split, load_splits
from .distributed import is_first_rank, process_group, training_device
from .plot import MISSING_MATPLOTLIB, have_matplotlib, plot_runs
from .softmax import apply_recorded_attention

MODEL_CLASSES = {"mlm": YosoForMaskedLM, "mqar": YosoForTokenClassification}  # else sequence classification


def class_names(args: TrainArgs, num_classes: int | None) -> list[str] | None:
    """Names of the classes in id order: digits (ListOps), value token ids (MQAR), or --label-names."""
    if args.task == "listops":
        return [str(i) for i in range(num_classes)]
    if args.task == "mqar":
        first_value = args.mqar_vocab_size - num_classes
        return [str(first_value + i) for i in range(num_classes)]
    return args.label_names


def build_model(args: TrainArgs, vocab_size: int, pad_id: int, num_classes: int | None):
    """The task's model (MODEL_CLASSES; num_classes None for a masked LM): fresh, or from --init-from."""
    cls = MODEL_CLASSES.get(args.task, YosoForSequenceClassification)
    labels = {} if num_classes is None else {"num_labels": num_classes}
    if args.init_from:
        model = load_init_model(cls, args, labels)
        check_fits(model.config, args, vocab_size)
        for name in HASHING_FIELDS:  # given on the command line: they replace the model's
            if getattr(args, name) is not None:
                setattr(model.config, name, getattr(args, name))
    else:
        config = YosoConfig(
            vocab_size=vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
            num_attention_heads=args.num_heads, intermediate_size=args.intermediate_size,
            max_position_embeddings=args.max_length, pad_token_id=pad_id, bos_token_id=None, eos_token_id=None,
            hidden_dropout_prob=args.dropout, use_expectation=args.attention == "yoso-e", num_hash=args.num_hash,
            hash_code_len=args.hash_code_len, conv_window=args.conv_window, classifier_pooling=args.pooling,
            lsh_backward=args.yoso_backward == "lsh",
            use_fast_hash=use_fast_hash(args), **labels,
        )  # fmt: skip
        model = cls(config)
        model.config.attention_kind = args.attention
    names = class_names(args, num_classes)
    if names:
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {name: i for i, name in enumerate(names)}
    model.config.recompute_hash_codes = args.recompute_hash_codes  # training memory, also for --init-from models
    apply_recorded_attention(model)
    return model


def load_init_model(cls, args: TrainArgs, labels: dict):
    """The model in --init-from; with --repeat-positions a YOSO model with fewer positions than --max-length is
    lengthened on the way in as `yoso extend` does (its trained position rows repeated; every other weight
    unchanged), so that a run can continue at a longer length than the one it started from."""
    source = local_dir(args.init_from, "--init-from")
    config_path = source / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    check_classes(config, cls, args, labels.get("num_labels"))
    positions = config.get("max_position_embeddings", args.max_length)
    if not args.repeat_positions or config.get("model_type") != "yoso" or positions >= args.max_length:
        return cls.from_pretrained(source, **labels)
    with tempfile.TemporaryDirectory() as tmp:
        note = extend_checkpoint(source, Path(tmp) / "model", args.max_length, args.hash_code_len, args.num_hash)
        model = cls.from_pretrained(Path(tmp) / "model", **labels)
    if is_first_rank():
        print(f"--init-from --repeat-positions: {note}", file=sys.stderr)
    return model


def check_classes(config: dict, cls, args: TrainArgs, num_classes: int | None) -> None:
    """A head of the task's class from --init-from carries a classifier for its own classes: they must be the data's."""
    theirs = len(config.get("id2label") or {})
    if num_classes is None or cls.__name__ not in config.get("architectures", ()) or theirs in (0, num_classes):
        return
    if args.task == "mqar":  # the classes are the vocabulary's values
        raise ValueError(f"--mqar-vocab-size {args.mqar_vocab_size} gives {num_classes} values, but the model in "
                         f"{args.init_from} predicts {theirs}: it was trained with --mqar-vocab-size "
                         f"{config.get('vocab_size')}")  # fmt: skip
    raise ValueError(f"the model in {args.init_from} predicts {theirs} classes, the data has {num_classes}")


def use_fast_hash(args: TrainArgs) -> bool:
    """--hash: fast or gaussian; auto is fast where the head dim (padded to a power of two) holds tau bits."""
    if args.hash == "auto":
        return padded_dim(args.hidden_size // args.num_heads) >= args.hash_code_len
    return args.hash == "fast"


def set_attention_for_step(model, args: TrainArgs, step: int) -> None:
    """--expectation-warmup-steps: YOSO-E before that step, sampling from it on (evaluations and checkpoints
    after the warm-up's last step already use sampling). YOSO-E and sampling share every weight.
    --hash-code-len-start: tau of this step's schedule (evaluations and checkpoints use the next step's)."""
    if args.expectation_warmup_steps:
        model.config.use_expectation = step < args.expectation_warmup_steps
    if args.hash_code_len_warmup_steps:
        model.config.hash_code_len = hash_code_len_at(args, step)


def hash_code_len_at(args: TrainArgs, step: int) -> int:
    """--hash-code-len-start growing linearly to --hash-code-len over --hash-code-len-warmup-steps, rounded; a
    function of the step alone, so that a resumed run continues the schedule."""
    fraction = min(1.0, step / args.hash_code_len_warmup_steps)
    return round(args.hash_code_len_start + (args.hash_code_len - args.hash_code_len_start) * fraction)


def parameter_groups(model, args: TrainArgs) -> list[dict]:
    """AdamW groups: --weight-decay for every parameter, except those of a decay set on its own: the query and key
    projections (--qk-weight-decay), then the other 1-D parameters, LayerNorm scales and shifts and biases
    (--norm-weight-decay). One group when neither is set, so that earlier checkpoints resume."""
    decays = {"rest": args.weight_decay, "qk": args.qk_weight_decay, "norm": args.norm_weight_decay}
    qk_names = (".attention.self.query.", ".attention.self.key.")

    def group_of(name: str, param) -> str:
        if decays["qk"] is not None and any(part in name for part in qk_names):
            return "qk"
        return "norm" if decays["norm"] is not None and param.ndim == 1 else "rest"

    params = {group: [] for group in decays}
    for name, param in model.named_parameters():
        params[group_of(name, param)].append(param)
    return [{"params": params[group], "weight_decay": decay} for group, decay in decays.items()
            if group == "rest" or decay is not None]  # fmt: skip


def check_fits(config: YosoConfig, args: TrainArgs, vocab_size: int) -> None:
    """A model from --init-from must have the positions and vocabulary the data needs."""
    if args.max_length > config.max_position_embeddings:
        raise ValueError(
            f"--max-length {args.max_length} exceeds the {config.max_position_embeddings} positions of the model in "
            f"{args.init_from}; add --repeat-positions to repeat its trained positions up to the new length (or write "
            f"a lengthened copy: yoso extend {args.init_from} DST --max-length {args.max_length})"
        )
    if vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer has {vocab_size} ids but the model in {args.init_from} only "
                         f"{config.vocab_size}; use the model's own tokenizer (--tokenizer)")  # fmt: skip


def _lr_lambda(args: TrainArgs):
    """Linear warm-up from 0, then cosine or linear decay to 0 at max_steps (or constant)."""

    def fn(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = min(1.0, (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps))
        if args.lr_schedule == "linear":
            return 1.0 - progress
        if args.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return fn


def batch_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[correct, summed cross-entropy, labelled positions, sequences with every labelled position right,
    sequences] of one batch: logits (batch, [n,] classes), labels (batch, [n]) with -100 where unlabelled."""
    picked = labels != -100
    right = (logits.argmax(-1) == labels) | ~picked  # (batch, [n])
    all_right = right.reshape(len(labels), -1).all(1)  # (batch,)
    loss = F.cross_entropy(logits[picked].float(), labels[picked], reduction="sum")
    return torch.tensor([float((right & picked).sum()), float(loss), float(picked.sum()), float(all_right.sum()),
                         float(len(labels))], dtype=torch.float64)  # fmt: skip


@torch.no_grad()
def evaluate(model, split: Split, batch_size: int, rank: int, world: int) -> dict[str, float]:
    """Accuracy and mean cross-entropy over the labelled positions: the examples of a classifier, the
    masked tokens of a masked LM or the queries of MQAR (labels -100 elsewhere); a masked LM also gets its
    perplexity, MQAR the fraction of sequences with every query right (sequence_accuracy)."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(5, dtype=torch.float64)
    for input_ids, mask, labels in split.batches(batch_size, rank, world):
        input_ids, mask, labels = (t.to(device) for t in (input_ids, mask, labels))
        sums += batch_sums(model(input_ids=input_ids, attention_mask=mask).logits, labels)
    if world > 1:
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    model.train()
    count = max(1.0, float(sums[2]))
    metrics = {"accuracy": float(sums[0]) / count, "loss": float(sums[1]) / count}
    if isinstance(split, MlmSplit):
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
    if split.per_sequence:
        metrics["sequence_accuracy"] = float(sums[3]) / max(1.0, float(sums[4]))
    return metrics


def global_mean(value: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of a per-process scalar over the processes: the training loss of the whole batch under torchrun
    (each process's loss is the mean over its equal share of the batch)."""
    if world > 1:
        dist.all_reduce(value)
        value = value / world
    return value


def score(metrics: dict[str, float], task: str) -> float:
    """What "best" means: eval accuracy for classifiers, lowest eval loss for masked LMs."""
    return -metrics["loss"] if task == "mlm" else metrics["accuracy"]


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
    device = training_device(args.device)
    with process_group(device) as (rank, world):
        return _train_in_group(args, rank, world, device)


def _train_in_group(args: TrainArgs, rank: int, world: int, device: torch.device) -> dict:
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
    model = build_model(args, vocab_size, pad_id, num_classes).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, args), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(args))
    step, best = 0, -math.inf
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best = state["step"], state.get("best_score", state.get("best_accuracy"))
        restore_rng(state)
    ddp_model = model
    if world > 1:
        device_ids = [device] if device.type == "cuda" else None
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    log = None
    if rank == 0:
        if not have_matplotlib():
            print(f"notice: {MISSING_MATPLOTLIB}; curves.png is skipped", file=sys.stderr)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "args.json").write_text(json.dumps(asdict(args), indent=2))
        log = MetricsLog(out_dir / "metrics.jsonl", step if state else None)

    def checkpoint(path: Path) -> None:
        if rank == 0:
            save_checkpoint(path, model, optimizer, scheduler, step, {"best_score": best})
        if world > 1:
            dist.barrier()

    if device.type == "cpu":  # before any step's activations (heap.py)
        weights = (tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear))
        reserve_matmul_buffers(weights, args.batch_size * args.max_length)
    model.train()
    set_attention_for_step(model, args, step)
    train_split, eval_baselines = splits["train"], splits["eval"].baselines()
    tokens, train_seconds = 0, 0.0  # tokens/s counts training steps only, not evaluations and checkpoints
    bar = tqdm(total=args.max_steps, initial=step, disable=rank != 0, desc=f"train {args.attention}", unit="step")
    try:
        while step < args.max_steps:
            start = time.perf_counter()
            batch = train_split.batch_at(step, args.batch_size, args.seed, rank, world)
            input_ids, mask, labels = (t.to(device) for t in batch)
            loss = ddp_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if args.trim_memory_every and step % args.trim_memory_every == 0:
                release_free_heap()
            set_attention_for_step(model, args, step)
            loss = global_mean(loss.detach(), world)
            tokens += int(mask.sum()) * world
            train_seconds += time.perf_counter() - start
            rate = tokens / train_seconds
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{rate:.0f}")
            if log:
                log.write({"step": step, "split": "train", "loss": loss.item(), "lr": scheduler.get_last_lr()[0]})
            if step % args.eval_every == 0 or step == args.max_steps:
                metrics = evaluate(model, splits["eval"], args.batch_size, rank, world)
                if log:
                    log.write({"step": step, "split": "eval", **metrics, **eval_baselines})
                if score(metrics, args.task) > best:
                    best = score(metrics, args.task)
                    checkpoint(best_dir)
            if step % args.save_every == 0 or step == args.max_steps:
                checkpoint(last_dir)
    except KeyboardInterrupt:
        checkpoint(last_dir)
        bar.close()
        raise
    bar.close()
    test = evaluate(model, splits["test"], args.batch_size, rank, world)
    summary = {
        "task": args.task,
        "attention": args.attention,
        "steps": step,
        **({"best_eval_loss": -best} if args.task == "mlm" else {"best_eval_accuracy": best}),
        **{f"test_{name}": value for name, value in test.items()},
        **{f"{name}_baseline": rate for name, rate in splits["test"].baselines().items()},
        "tokens_per_second": tokens / max(1e-9, train_seconds),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "memalign_shim": memalign_shim_preloaded(),  # the heap the peak was measured on (heap.py)
        "world_size": world,
    }
    if rank == 0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if have_matplotlib():
            plot_runs([out_dir], out_dir / "curves.png")
    return summary
