"""Encoded splits and deterministic batching: the batch at a step is a function of (seed, step) only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..data import listops, mqar
from ..data.mlm import MlmVocab, mask_tokens, pack_blocks, read_documents
from ..data.text import class_names, encode, label_ids, load_rows, make_mlm_tokenizer, make_tokenizer


PAD_MULTIPLE = 128  # batch widths are rounded up to a multiple of this (capped at the model's max length)


class Split:
    """Encoded examples of one split. Batches are padded to a few fixed widths, so that the allocator
    reuses the freed buffers of earlier steps instead of fragmenting its heap with every new width
    (glibc: peak RSS 2.2x the live peak at LRA length with exact widths)."""

    per_sequence = False  # whether evaluation also scores whole sequences (all labelled positions right)

    def __init__(self, examples: list[tuple[list[int], int]], pad_id: int, max_width: int | None = None,
                 task_baselines: dict[str, float] | None = None):  # fmt: skip
        if not examples:
            raise ValueError("a data split is empty")
        self.examples, self.pad_id = examples, pad_id
        self.max_width = max_width or max(len(seq) for seq, _ in examples)
        self.task_baselines = task_baselines or {}

    def __len__(self) -> int:
        return len(self.examples)

    def baselines(self) -> dict[str, float]:
        """Accuracies of trivial classifiers on this split, for reading a run's accuracy against them."""
        counts = Counter(label for _, label in self.examples)
        return {"majority": max(counts.values()) / len(self.examples), **self.task_baselines}

    def collate(self, indices: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, labels) padded to the longest sequence of the batch, rounded up."""
        seqs = [self.examples[i][0] for i in indices]
        longest = max(len(s) for s in seqs)
        width = max(longest, min(self.max_width, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE))
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        labels = torch.tensor([self.examples[i][1] for i in indices])
        return self.finish(ids, mask, labels, seed)

    def finish(self, ids, mask, labels, seed: int):
        """Last change to a batch before the model sees it; ``seed`` is a function of the batch's position."""
        return ids, mask, labels

    def batch_at(self, step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        """This rank's shard of global batch ``step``: epochs are seeded permutations of the split."""
        global_size = batch_size * world
        per_epoch = max(1, len(self) // global_size)
        epoch, index = divmod(step, per_epoch)
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        batch = order[index * global_size : (index + 1) * global_size].tolist()
        if len(batch) < global_size:  # a split smaller than one global batch: wrap around
            batch = (batch * (global_size // max(1, len(batch)) + 1))[:global_size]
        return self.collate(batch[rank::world], seed=(seed * 1_000_003 + step) * 64 + rank)

    def batches(self, batch_size: int, rank: int = 0, world: int = 1):
        """Every example once, in order; rank r takes examples r, r + world, ..."""
        mine = list(range(rank, len(self), world))
        for start in range(0, len(mine), batch_size):
            yield self.collate(mine[start : start + batch_size], seed=start * 64 + rank)


class MlmSplit(Split):
    """Packed blocks of one length; each batch is masked with a generator seeded by its position, so a
    resumed run masks exactly as the uninterrupted one (and evaluation always the same way)."""

    def __init__(self, blocks: list[list[int]], vocab: MlmVocab):
        super().__init__([(block, -100) for block in blocks], vocab.pad_id)
        self.vocab = vocab

    def baselines(self) -> dict[str, float]:
        return {}

    def finish(self, ids, mask, labels, seed: int):
        masked, labels = mask_tokens(ids, self.vocab, torch.Generator().manual_seed(seed))
        return masked, mask, labels


class MqarSplit(Split):
    """Generated MQAR sequences, all of one length, as a (num_examples, length) id array; labels (one per
    query position, -100 elsewhere) are derived from the ids batch by batch. Scored per query and per
    sequence (all its queries right)."""

    per_sequence = True

    def __init__(self, ids: np.ndarray, spec: mqar.MqarSpec):
        self.ids, self.spec, self.pad_id = ids, spec, mqar.PAD_ID

    def __len__(self) -> int:
        return len(self.ids)

    def baselines(self) -> dict[str, float]:
        return mqar.chance(self.spec.num_pairs)

    def collate(self, indices: list[int], seed: int = 0):
        ids = self.ids[indices]  # (batch, length)
        labels = mqar.labels(ids, self.spec.num_pairs, self.spec.first_value)
        return torch.from_numpy(ids.astype(np.int64)), torch.ones(ids.shape, dtype=torch.long), torch.from_numpy(labels)


def mqar_spec(args, num_examples: int = 0, seed: int = 0) -> mqar.MqarSpec:
    return mqar.MqarSpec(num_examples=num_examples, length=args.max_length, num_pairs=args.mqar_pairs,
                         vocab_size=args.mqar_vocab_size, power_a=args.mqar_power_a, filler=args.mqar_filler,
                         seed=seed)  # fmt: skip


def _mqar_splits(args) -> tuple[dict[str, Split], int, int, int]:
    sizes = {"train": args.train_examples, "eval": args.eval_examples, "test": args.test_examples}
    splits = {}
    for offset, (name, size) in enumerate(sizes.items()):
        spec = mqar_spec(args, size, args.seed * 10 + offset)
        splits[name] = MqarSplit(mqar.load_or_generate(spec, Path(args.cache_dir)), spec)
    return splits, args.mqar_vocab_size, mqar.PAD_ID, spec.num_values


def _mlm_splits(args) -> tuple[dict[str, Split], int, int, None]:
    encode, vocab = make_mlm_tokenizer(args.tokenizer)

    def blocks(paths: list[str]) -> list[list[int]]:
        docs = [doc for path in paths for doc in read_documents(path, args.text_column)]
        return pack_blocks(docs, encode, vocab, args.max_length, ", ".join(map(str, paths)))

    train = blocks(args.train_file)
    if args.eval_file:
        held_out = blocks(args.eval_file)
    elif len(train) < 2:
        raise ValueError(f"{', '.join(args.train_file)}: one block of --max-length {args.max_length} in all; "
                         "need two (one held out for evaluation) or an --eval-file")  # fmt: skip
    else:  # hold out the last 5% of the blocks (at least one) for evaluation
        cut = len(train) - max(1, len(train) // 20)
        train, held_out = train[:cut], train[cut:]
    test = blocks(args.test_file) if args.test_file else held_out
    splits = {"train": MlmSplit(train, vocab), "eval": MlmSplit(held_out, vocab), "test": MlmSplit(test, vocab)}
    return splits, vocab.size, vocab.pad_id, None


def load_splits(args) -> tuple[dict[str, Split], int, int, int]:
    """({"train", "eval", "test"} splits, vocab size, pad id, number of classes or None) for the task."""
    if args.task == "mlm":
        return _mlm_splits(args)
    if args.task == "mqar":
        return _mqar_splits(args)
    if args.task == "listops":
        encode_fn, vocab, pad = make_tokenizer("listops")
        spec = dict(min_length=min(args.min_length, args.max_length - 1), max_length=args.max_length - 1,
                    max_depth=args.max_depth, max_args=args.max_args, leaf_prob=args.leaf_prob)  # fmt: skip
        sizes = {"train": args.train_examples, "eval": args.eval_examples, "test": args.test_examples}
        rows = {name: listops.load_or_generate(listops.ListOpsSpec(num_examples=size, seed=args.seed * 10 + offset,
                                                                   **spec), Path(args.cache_dir))
                for offset, (name, size) in enumerate(sizes.items())}  # fmt: skip
        splits = {name: Split(encode(split_rows, encode_fn, args.max_length), pad, args.max_length,
                              {"first_operator": listops.first_operator_baseline(rows["train"], split_rows)})
                  for name, split_rows in rows.items()}  # fmt: skip
        return splits, vocab, pad, listops.NUM_CLASSES
    encode_fn, vocab, pad = make_tokenizer(args.tokenizer)
    files = {"train": args.train_file, "eval": args.eval_file or args.train_file,
             "test": args.test_file or args.eval_file or args.train_file}  # fmt: skip
    rows = {name: [row for path in paths for row in load_rows(path, args.text_column, args.label_column)]
            for name, paths in files.items()}  # fmt: skip
    names = class_names(rows["train"], args.label_names)
    num_classes = len(names) if names else args.num_classes
    splits = {}
    for name, split_rows in rows.items():
        label_ids(split_rows, num_classes, names)
        splits[name] = Split(encode(split_rows, encode_fn, args.max_length), pad, args.max_length)
    args.label_names = names
    return splits, vocab, pad, num_classes
