"""The arguments of ``yoso train``: one dataclass whose field metadata is the command line's help, and
named presets (recipes) that explicit flags override."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields

from ..models.yoso.convert import scaled_hashing
from ..ops.checks import MAX_HASH_CODE_LEN
from ..ops.hashing import padded_dim
from .distributed import is_first_rank

ATTENTION_KINDS = ("yoso", "yoso-e", "softmax")
FRESH_NUM_HASH, FRESH_HASH_CODE_LEN = 16, 6
HASHING_FIELDS = ("num_hash", "hash_code_len")
TAU_SCHEDULE_FIELDS = ("hash_code_len_start", "hash_code_len_warmup_steps")
TASKS = ("listops", "text", "mlm", "mqar")
MQAR_FILLERS = ("zero", "random")
POOLINGS = ("cls", "mean")
LR_SCHEDULES = ("cosine", "linear", "constant")
YOSO_BACKWARDS = ("lsh", "expectation")
HASHES = ("auto", "fast", "gaussian")
DEVICES = ("auto", "cpu", "cuda")


def _arg(default, help: str, **extra):
    """A field with its command-line help (and choices, when given)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainArgs:
    task: str = _arg("listops", "what to train: a classifier on generated ListOps (10 classes) or on your "
                     "labelled text files, a masked language model on your documents, or token classification on "
                     "generated multi-query associative recall (mqar)", choices=TASKS)  # fmt: skip
    output_dir: str | None = _arg(None, "run directory for metrics, plots and checkpoints (default: runs/TASK)")
    preset: str | None = _arg(None, "a named recipe that sets many flags at once; flags given explicitly "
                              "override it (docs: guides/training.md)")  # fmt: skip
    attention: str = _arg("yoso", "token mixing: YOSO sampling (linear), YOSO-E (exact expectation, "
                          "quadratic) or softmax (SDPA baseline)", choices=ATTENTION_KINDS)  # fmt: skip
    max_length: int = _arg(512, "longest sequence in tokens (the model's positions; mlm: the block length; mqar: "
                           "the length of every sequence); longer text is truncated")  # fmt: skip
    # listops and mqar
    train_examples: int = _arg(6000, "ListOps / MQAR: number of training sequences (generated once, cached)")
    eval_examples: int = _arg(500, "ListOps / MQAR: number of evaluation sequences")
    test_examples: int = _arg(500, "ListOps / MQAR: number of test sequences")
    min_length: int = _arg(16, "ListOps: shortest expression in tokens")
    # defaults: LRA's distribution (its generator's depth, operands and digit probability), shorter sequences
    max_depth: int = _arg(10, "ListOps: deepest nesting of operators")
    max_args: int = _arg(10, "ListOps: most operands of one operator (at least 2)")
    leaf_prob: float = _arg(0.75, "ListOps: probability that an operand is a digit rather than a sub-expression")
    # mqar
    mqar_pairs: int = _arg(8, "MQAR: key-value pairs per sequence, each queried once (needs --max-length >= 4x)")
    mqar_vocab_size: int = _arg(8192, "MQAR: token ids (2 special, then half keys, half values; Zoology: 8192)")
    mqar_power_a: float = _arg(0.01, "MQAR: power-law exponent of the gaps between the pairs and their queries "
                               "(small: mostly short gaps; Zoology: 0.01)")  # fmt: skip
    mqar_filler: str = _arg("zero", "MQAR: tokens between the queries: one filler id (zero) or random keys and "
                            "values the sequence does not query (random)", choices=MQAR_FILLERS)  # fmt: skip
    # text and mlm
    train_file: list[str] | None = _arg(None, "text: .csv / .jsonl files with text and label columns; mlm: .txt "
                                        "(documents separated by blank lines) / .jsonl files", nargs="+")  # fmt: skip
    eval_file: list[str] | None = _arg(None, "text / mlm: evaluation files (default: text, the training files; "
                                       "mlm, the last 5%% of the training blocks)", nargs="+")  # fmt: skip
    test_file: list[str] | None = _arg(None, "text / mlm: test files (default: the evaluation data)", nargs="+")
    text_column: str = _arg("text", "text / mlm: name of the text column or JSON field")
    label_column: str = _arg("label", "text: name of the label column or JSON field (integer class ids)")
    tokenizer: str = _arg("bytes", "text / mlm: 'bytes' (UTF-8 bytes, nothing to train) or a tokenizer "
                          "directory (a hub id only if already in the local cache)")  # fmt: skip
    num_classes: int = _arg(2, "text: number of classes when labels are ids 0 .. num_classes - 1")
    label_names: list[str] | None = _arg(None, "text: class names in id order; labels may then be names or ids "
                                         "(default: the sorted names in the data when labels are names)",
                                         nargs="+")  # fmt: skip
    # model
    init_from: str | None = _arg(None, "start from this saved model directory (a hub id only if already in the "
                                 "local cache) instead of a fresh model")  # fmt: skip
    repeat_positions: bool = _arg(False, "with --init-from: a YOSO model with fewer positions than --max-length gets "
                                  "its trained position rows repeated up to it, as yoso extend does (to continue "
                                  "a run at a longer length; without this flag that is an error)")  # fmt: skip
    hidden_size: int = _arg(64, "model width")
    num_layers: int = _arg(2, "number of transformer layers")
    num_heads: int = _arg(4, "attention heads per layer (must divide --hidden-size)")
    intermediate_size: int = _arg(128, "feed-forward width")
    num_hash: int | None = _arg(None, "YOSO sampling: hash functions per attention call (error ~ 1/sqrt) (default: "
                                f"{FRESH_NUM_HASH} for a fresh model, or the preset's; with --init-from, the model's; "
                                "raised by the length rule where tau grows)")  # fmt: skip
    hash_code_len: int | None = _arg(None, "YOSO: bits per hash code tau (2**tau buckets; YOSO-E's exponent) (default: "
                                     f"{FRESH_HASH_CODE_LEN} for a fresh model, or the preset's, raised by the length "
                                     "rule above the preset's --max-length; with --init-from, the model's, raised by "
                                     "the length rule when --repeat-positions lengthens it)")  # fmt: skip
    conv_window: int | None = _arg(None, "odd kernel size of YOSO's depthwise convolution over values (default: none)")
    hash: str = _arg("auto", "YOSO sampling: hash functions: fast (Hadamard; orthogonal bits, a sharper kernel than "
                     "YOSO-E's), gaussian (unbiased estimate of YOSO-E) or auto (gaussian for yoso trained from its "
                     "initialisation, as with the default tau schedule; otherwise fast when head dim >= tau)",
                     choices=HASHES)  # fmt: skip
    yoso_backward: str = _arg("lsh", "YOSO sampling: gradients from the forward's sampled collisions (lsh, linear) "
                              "or from YOSO-E's expectation (expectation, quadratic; a diagnostic)",
                              choices=YOSO_BACKWARDS)  # fmt: skip
    recompute_hash_codes: bool = _arg(False, "YOSO sampling: keep each attention call's hash functions instead of "
                                      "its codes and rehash in backward (less memory, one more hashing; same "
                                      "gradients)")  # fmt: skip
    expectation_warmup_steps: int = _arg(0, "YOSO sampling: train the first this many steps with YOSO-E (exact "
                                         "expectation, quadratic) on the same weights, then sample")  # fmt: skip
    hash_code_len_start: int | None = _arg(None, "YOSO: tau at step 0, growing linearly (rounded) to "
                                           "--hash-code-len over --hash-code-len-warmup-steps: fewer bits first, so "
                                           "more collisions and denser gradients (default: 2 over the first quarter of "
                                           "--max-steps for --attention yoso trained from its initialisation, no "
                                           "schedule otherwise; --hash-code-len-warmup-steps 0 turns it off)")  # fmt: skip
    hash_code_len_warmup_steps: int = _arg(0, "YOSO: steps over which tau grows from --hash-code-len-start to "
                                           "--hash-code-len")  # fmt: skip
    pooling: str = _arg("cls", "classifier input: first token (cls, transformers-compatible) or mean over real "
                        "tokens (mean, the paper's LRA models)", choices=POOLINGS)  # fmt: skip
    dropout: float = _arg(0.1, "dropout probability of embeddings, layers and the classifier")
    # optimisation
    trim_memory_every: int = _arg(10, "return freed heap memory to the OS every this many steps (glibc's "
                                  "malloc_trim; 0: never): a lower peak RSS for a few %% of tokens/s")  # fmt: skip
    batch_size: int = _arg(32, "sequences per optimizer step and process (under torchrun the step's batch is this "
                           "times the number of processes)")  # fmt: skip
    lr: float = _arg(2e-3, "peak learning rate of AdamW")
    weight_decay: float = _arg(0.01, "AdamW weight decay")
    qk_weight_decay: float | None = _arg(None, "AdamW weight decay of the query and key projections (default: "
                                         "--weight-decay). YOSO sees only the directions of q and k, so AdamW grows "
                                         "their norms step by step and their angular learning rate falls; decay "
                                         "holds the norms (docs: studies.md, MQAR)")  # fmt: skip
    norm_weight_decay: float | None = _arg(None, "AdamW weight decay of LayerNorm scales and shifts and of biases "
                                           "(default: --weight-decay). 0 keeps strong decay (the mqar preset's 0.3) "
                                           "from shrinking the LayerNorm scales of a model whose early gradients are "
                                           "weak (docs: studies.md, MQAR)")  # fmt: skip
    warmup_steps: int = _arg(100, "steps of linear learning-rate warm-up from 0")
    lr_schedule: str = _arg("cosine", "learning-rate decay after warm-up, to 0 at --max-steps",
                            choices=LR_SCHEDULES)  # fmt: skip
    max_steps: int = _arg(1200, "optimizer steps of the run")
    eval_every: int = _arg(200, "evaluate (and keep the best checkpoint) every this many steps")
    save_every: int = _arg(200, "write the resumable checkpoint last/ every this many steps")
    seed: int = _arg(0, "seed of data order, initialisation and hashing (ListOps data uses it too)")
    device: str = _arg("auto", "where to train: cpu, cuda (under torchrun each process takes GPU LOCAL_RANK, nccl) "
                       "or auto (cuda when torch sees one)", choices=DEVICES)  # fmt: skip
    resume: bool = _arg(False, "continue the run in --output-dir from its last checkpoint")
    cache_dir: str = _arg(os.path.join(os.path.expanduser("~"), ".cache", "yoso_attention"),
                          "where generated ListOps and MQAR splits are cached")  # fmt: skip

    def validate(self) -> None:
        for name, choices in (("task", TASKS), ("attention", ATTENTION_KINDS), ("pooling", POOLINGS),
                              ("lr_schedule", LR_SCHEDULES), ("yoso_backward", YOSO_BACKWARDS),
                              ("mqar_filler", MQAR_FILLERS), ("hash", HASHES), ("device", DEVICES)):  # fmt: skip
            if getattr(self, name) not in choices:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: expected one of {choices}")
        if self.task in ("text", "mlm") and not self.train_file:
            raise ValueError(f"--task {self.task} needs --train-file")
        for name in ("batch_size", "max_steps", "eval_every", "save_every", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_args < 2 or self.max_depth < 1 or not 0.0 <= self.leaf_prob <= 1.0:
            raise ValueError(f"ListOps: need --max-args >= 2, --max-depth >= 1 and 0 <= --leaf-prob <= 1; got "
                             f"{self.max_args}, {self.max_depth}, {self.leaf_prob}")  # fmt: skip
        if self.hash == "fast" and padded_dim(self.hidden_size // self.num_heads) < (self.hash_code_len or 0):
            raise ValueError(f"--hash fast needs the head dim ({self.hidden_size // self.num_heads}, padded to a power of "
                             f"two) >= --hash-code-len {self.hash_code_len}; use --hash gaussian")  # fmt: skip
        if self.repeat_positions and not self.init_from:
            raise ValueError("--repeat-positions lengthens an --init-from model; got no --init-from")
        if self.task == "mqar":
            from .data import mqar_spec

            mqar_spec(self).validate()
        decays = {"--weight-decay": self.weight_decay, "--qk-weight-decay": self.qk_weight_decay,
                  "--norm-weight-decay": self.norm_weight_decay}  # fmt: skip
        for option, decay in decays.items():
            if decay is not None and decay < 0:
                raise ValueError(f"{option} must be >= 0, got {decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.trim_memory_every < 0:
            raise ValueError(f"--trim-memory-every must be >= 0 (0: never), got {self.trim_memory_every}")
        if self.expectation_warmup_steps < 0:
            raise ValueError(f"--expectation-warmup-steps must be >= 0, got {self.expectation_warmup_steps}")
        if self.expectation_warmup_steps >= self.max_steps:
            raise ValueError(f"--expectation-warmup-steps {self.expectation_warmup_steps} must be below --max-steps "
                             f"{self.max_steps}: the run would never sample (--attention yoso-e trains YOSO-E)")
        if self.expectation_warmup_steps and self.attention != "yoso":
            raise ValueError(f"--expectation-warmup-steps applies to --attention yoso only, "
                             f"got --attention {self.attention}")  # fmt: skip
        self._validate_hash_code_len_schedule()
        if self.yoso_backward != "lsh" and self.attention != "yoso":
            raise ValueError(f"--yoso-backward {self.yoso_backward!r} applies to --attention yoso only, "
                             f"got --attention {self.attention}")  # fmt: skip

    def _validate_hash_code_len_schedule(self) -> None:
        start, steps = self.hash_code_len_start, self.hash_code_len_warmup_steps
        if steps < 0:
            raise ValueError(f"--hash-code-len-warmup-steps must be >= 0, got {steps}")
        if (start is None) != (steps == 0):
            raise ValueError(f"a tau schedule needs both --hash-code-len-start and --hash-code-len-warmup-steps > 0, "
                             f"got {start} and {steps}")  # fmt: skip
        if start is None:
            return
        if self.hash_code_len is None:
            raise ValueError("a tau schedule with --init-from needs --hash-code-len (the tau it grows to)")
        if not 1 <= start <= self.hash_code_len:
            raise ValueError(f"--hash-code-len-start must be in [1, --hash-code-len {self.hash_code_len}], got {start}")
        if steps > self.max_steps:
            raise ValueError(f"--hash-code-len-warmup-steps {steps} must be <= --max-steps {self.max_steps}")
        if self.attention == "softmax":
            raise ValueError("--hash-code-len-start applies to --attention yoso or yoso-e, got --attention softmax")


# The authors' LRA ListOps configuration (YOSO repository, LRA/code): 2 layers, width 64, feed-forward 128,
# 2 heads of 32, mean pooling; 96k / 2k / 2k expressions of 500-2000 tokens from LRA's generator (operand is a
# digit with probability 0.75, 2-10 operands, depth <= 10, rejection to the length range);
# batch 32, AdamW 1e-4, 1000 warm-up steps then linear decay, 5000 steps, no weight decay; m = 32, tau = 11.
PRESETS: dict[str, dict] = {
    "lra-listops": dict(
        task="listops", max_length=2000, min_length=500, max_depth=10, max_args=10, leaf_prob=0.75, train_examples=96000,
        eval_examples=2000, test_examples=2000, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
        pooling="mean", dropout=0.1, batch_size=32, lr=1e-4, weight_decay=0.0, warmup_steps=1000,
        lr_schedule="linear", max_steps=5000, eval_every=500, save_every=250, num_hash=32, hash_code_len=11,
    ),
    # docs/studies.md, MQAR: the recipe on which YOSO-E recalls (1.000 per query on 3 of 3 seeds by step 1000, ~2
    # min; with tau fixed at 8, seeds 0, 1, 2 ended at chance, 1.000 and 0.59). Recipes are per attention, as in
    # Zoology's lr sweeps: softmax stays at chance on this one and learns with --lr 3e-3 --weight-decay 0.01;
    # sampled yoso learns it with --attention yoso --num-hash 32 --max-steps 3000 and its default tau schedule (5
    # of 5 seeds with tau 2 -> 8 over 600 steps, Gaussian hash). The tau schedule here is for YOSO-E only.
    "mqar": dict(
        task="mqar", attention="yoso-e", max_length=128, mqar_pairs=8, mqar_vocab_size=256, train_examples=40000,
        eval_examples=500, test_examples=500, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
        conv_window=3, dropout=0.0, batch_size=32, lr=1e-2, weight_decay=0.3, warmup_steps=100, max_steps=1200,
        eval_every=200, save_every=200, hash_code_len=8, hash_code_len_start=2, hash_code_len_warmup_steps=300,
    ),
}  # fmt: skip


# `yoso train --help` shows the options in these groups, in this order (every field in exactly one).
OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "task and data": ("task", "preset", "max_length", "train_examples", "eval_examples", "test_examples",
                      "min_length", "max_depth", "max_args", "leaf_prob", "mqar_pairs", "mqar_vocab_size",
                      "mqar_power_a", "mqar_filler", "train_file", "eval_file", "test_file", "text_column",
                      "label_column", "tokenizer", "num_classes", "label_names", "cache_dir"),
    "model": ("init_from", "repeat_positions", "hidden_size", "num_layers", "num_heads", "intermediate_size",
              "conv_window", "pooling", "dropout"),
    "attention": ("attention", "num_hash", "hash_code_len", "hash", "yoso_backward", "recompute_hash_codes",
                  "expectation_warmup_steps", "hash_code_len_start", "hash_code_len_warmup_steps"),
    "optimisation": ("batch_size", "lr", "weight_decay", "qk_weight_decay", "norm_weight_decay", "warmup_steps",
                     "lr_schedule", "max_steps", "seed"),
    "run control": ("output_dir", "device", "resume", "eval_every", "save_every", "trim_memory_every"),
}  # fmt: skip


def resolve_args(explicit: dict) -> TrainArgs:
    """TrainArgs from the defaults, then the preset named in ``explicit`` (if any), then ``explicit``."""
    preset = explicit.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: expected one of {tuple(PRESETS)}")
    preset_values = PRESETS[preset] if preset else {}
    values = {**preset_values, **explicit}
    trained = bool(explicit.get("init_from"))
    if trained:  # a preset's hashing is for fresh models
        values.update({name: explicit.get(name) for name in HASHING_FIELDS})
    # A preset's tau schedule is for a fresh model of its own attention, and is taken whole or not at all.
    own_attention = explicit.get("attention", preset_values.get("attention")) == preset_values.get("attention")
    if trained or not own_attention or any(name in explicit for name in TAU_SCHEDULE_FIELDS):
        for name in TAU_SCHEDULE_FIELDS:
            if name not in explicit:
                values.pop(name, None)
    args = TrainArgs(**values)
    if not args.init_from:
        args.num_hash = FRESH_NUM_HASH if args.num_hash is None else args.num_hash
        args.hash_code_len = FRESH_HASH_CODE_LEN if args.hash_code_len is None else args.hash_code_len
        scale_preset_hashing(args, preset_values, explicit)
    if sampled_from_scratch_defaults_apply(args, values):
        apply_sampled_from_scratch_defaults(args, values)
    if args.output_dir is None:
        args.output_dir = os.path.join("runs", preset or args.task)
    return args


def scale_preset_hashing(args: TrainArgs, preset_values: dict, explicit: dict) -> None:
    """A preset's tau is for its own --max-length: a fresh model trained longer gets what the length rule gives
    (``hashing_for_length``, as when a trained model is extended), for each of tau and m the command did not set."""
    preset_length = preset_values.get("max_length")
    if preset_length is None or "hash_code_len" not in preset_values or args.max_length <= preset_length \
            or args.attention == "softmax":  # fmt: skip
        return
    tau, m = scaled_hashing(preset_values["hash_code_len"], preset_values.get("num_hash", FRESH_NUM_HASH),
                            preset_length, args.max_length, explicit.get("hash_code_len"), explicit.get("num_hash"),
                            MAX_HASH_CODE_LEN)  # fmt: skip
    rule = {"hash_code_len": tau, "num_hash": m}  # the values the command gave come back unchanged
    changed = [f"--{name.replace('_', '-')} {getattr(args, name)} -> {value}" for name, value in rule.items()
               if getattr(args, name) != value]  # fmt: skip
    args.hash_code_len, args.num_hash = tau, m
    if changed and is_first_rank():
        print(f"--preset {explicit['preset']} at --max-length {args.max_length} (its hashing is for {preset_length} "
              f"tokens): {', '.join(changed)} by the length rule", file=sys.stderr)  # fmt: skip


# Sampled yoso trained from its initialisation: tau from 2 over the first quarter of the steps, Gaussian hash.
# The measured recipe (docs/studies.md): MQAR 5 of 5 seeds, ListOps 4 of 5 (softmax 4 of 5; the fixed tau with the
# fast hash 1 of 5).
SAMPLED_TAU_START = 2
SAMPLED_TAU_WARMUP_FRACTION = 0.25
SAMPLED_RECIPE_FIELDS = ("hash_code_len_start", "hash_code_len_warmup_steps", "expectation_warmup_steps")


def sampled_from_scratch_defaults_apply(args: TrainArgs, values: dict) -> bool:
    """True for --attention yoso trained from its initialisation when neither the command nor the preset chose a tau
    schedule or a YOSO-E warm-up, and tau leaves room to grow."""
    return (args.attention == "yoso" and not args.init_from and args.hash_code_len > SAMPLED_TAU_START
            and not any(name in values for name in SAMPLED_RECIPE_FIELDS))  # fmt: skip


def apply_sampled_from_scratch_defaults(args: TrainArgs, values: dict) -> None:
    """The tau schedule (and, under --hash auto, the Gaussian hash) that sampled yoso needs to take off."""
    args.hash_code_len_start = SAMPLED_TAU_START
    args.hash_code_len_warmup_steps = max(1, round(SAMPLED_TAU_WARMUP_FRACTION * args.max_steps))
    if "hash" not in values:
        args.hash = "gaussian"
    if is_first_rank():
        print(f"yoso from its initialisation: tau {SAMPLED_TAU_START} -> {args.hash_code_len} over the first "
              f"{args.hash_code_len_warmup_steps} steps, --hash {args.hash} (set --hash-code-len-warmup-steps 0 for a "
              "fixed tau)", file=sys.stderr)  # fmt: skip


def train_fields():
    """(group, name, default, help, choices, type, nargs) of every TrainArgs field, group by group."""
    by_name = {f.name: f for f in fields(TrainArgs)}
    for group, names in OPTION_GROUPS.items():
        for name in names:
            f = by_name[name]
            choices = tuple(PRESETS) if name == "preset" else f.metadata.get("choices")
            yield group, name, f.default, f.metadata["help"], choices, f.type, f.metadata.get("nargs")

