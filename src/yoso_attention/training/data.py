"""Encoded splits and deterministic batching: the batch at a step is a function of (seed, step) only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from ..data import listops
from ..data.text import check_labels, encode, load_rows, make_tokenizer


class Split:
    def __init__(self, examples: list[tuple[list[int], int]], pad_id: int):
        if not examples:
            raise ValueError("a data split is empty")
        self.examples, self.pad_id = examples, pad_id

    def __len__(self) -> int:
        return len(self.examples)

    def majority_rate(self) -> float:
        counts = Counter(label for _, label in self.examples)
        return max(counts.values()) / len(self.examples)

    def collate(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, labels) padded to the longest sequence of the batch."""
        seqs = [self.examples[i][0] for i in indices]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        labels = torch.tensor([self.examples[i][1] for i in indices])
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
        return self.collate(batch[rank::world])

    def batches(self, batch_size: int, rank: int = 0, world: int = 1):
        """Every example once, in order; rank r takes examples r, r + world, ..."""
        mine = list(range(rank, len(self), world))
        for start in range(0, len(mine), batch_size):
            yield self.collate(mine[start : start + batch_size])


def load_splits(args) -> tuple[dict[str, Split], int, int, int]:
    """({"train", "eval", "test"} splits, vocab size, pad id, number of classes) for the task."""
    if args.task == "listops":
        encode_fn, vocab, pad = make_tokenizer("listops")
        spec = dict(min_length=min(args.min_length, args.max_length - 1), max_length=args.max_length - 1,
                    max_depth=args.max_depth, leaf_prob=args.leaf_prob)  # fmt: skip
        sizes = {"train": args.train_examples, "eval": args.eval_examples, "test": args.test_examples}
        splits = {}
        for offset, (name, size) in enumerate(sizes.items()):
            spec_i = listops.ListOpsSpec(num_examples=size, seed=args.seed * 10 + offset, **spec)
            rows = listops.load_or_generate(spec_i, Path(args.cache_dir))
            splits[name] = Split(encode(rows, encode_fn, args.max_length), pad)
        return splits, vocab, pad, listops.NUM_CLASSES
    encode_fn, vocab, pad = make_tokenizer(args.tokenizer)
    files = {"train": args.train_file, "eval": args.eval_file or args.train_file,
             "test": args.test_file or args.eval_file or args.train_file}  # fmt: skip
    splits = {}
    for name, path in files.items():
        rows = load_rows(path, args.text_column, args.label_column)
        check_labels(rows, args.num_classes, str(path))
        splits[name] = Split(encode(rows, encode_fn, args.max_length), pad)
    return splits, vocab, pad, args.num_classes
