"""ListOps (Nangia & Bowman 2018; the Long Range Arena version of Tay et al. 2021): nested MAX / MIN /
MED / SM expressions over the digits 0-9, labelled with their value (10 classes).

    [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]  ->  5

The generator is seeded and deterministic; generated splits are cached on disk as JSONL.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

OPERATORS = ("MAX", "MIN", "MED", "SM")
VOCAB = ["<pad>", "<cls>", "[", "]", *OPERATORS, *map(str, range(10))]  # pad 0, cls 1
NUM_CLASSES = 10


@dataclass(frozen=True)
class ListOpsSpec:
    """Parameters of a generated split (all part of the cache key)."""

    num_examples: int = 4000
    min_length: int = 16
    max_length: int = 512
    max_depth: int = 6
    max_args: int = 5
    leaf_prob: float = 0.35
    seed: int = 0


class _TooLong(Exception):
    pass


def _tree(rng: random.Random, depth: int, spec: ListOpsSpec, budget: list[int]):
    """A random expression; raises _TooLong as soon as it needs more than budget[0] token ids."""
    leaf = depth >= spec.max_depth or (depth > 0 and rng.random() < spec.leaf_prob)
    budget[0] -= 1 if leaf else 3  # a digit, or "[", the operator and "]"
    if budget[0] < 0:
        raise _TooLong
    if leaf:
        return rng.randrange(10)
    return rng.choice(OPERATORS), [_tree(rng, depth + 1, spec, budget) for _ in range(rng.randint(2, spec.max_args))]


def apply_operator(op: str, values: list[int]) -> int:
    if op == "MAX":
        return max(values)
    if op == "MIN":
        return min(values)
    if op == "MED":
        ordered = sorted(values)  # LRA: int(np.median(...)), the mean of the middle two when even
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else int((ordered[mid - 1] + ordered[mid]) / 2)
    if op == "SM":
        return sum(values) % 10
    raise ValueError(f"unknown ListOps operator {op!r}, expected one of {OPERATORS}")


def _value(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, children = tree
    return apply_operator(op, [_value(c) for c in children])


def _tokens(tree) -> list[str]:
    if isinstance(tree, int):
        return [str(tree)]
    op, children = tree
    return ["[" + op, *[t for c in children for t in _tokens(c)], "]"]


def generate(spec: ListOpsSpec) -> list[dict]:
    """``spec.num_examples`` examples {"text": "[MAX 1 [SM 2 3 ] ]", "label": 5} with token counts (as
    ``tokenize`` counts them, without its classification token) in [min_length, max_length]."""
    rng = random.Random(spec.seed)
    examples = []
    bar = tqdm(total=spec.num_examples, desc="generating ListOps", unit="expr", leave=False, disable=None)
    while len(examples) < spec.num_examples:
        try:
            tree = _tree(rng, 0, spec, [spec.max_length])
        except _TooLong:
            continue
        tokens = _tokens(tree)
        length = len(tokens) + sum(t.startswith("[") for t in tokens)  # "[MAX" is two ids: "[" and "MAX"
        if spec.min_length <= length <= spec.max_length:
            examples.append({"text": " ".join(tokens), "label": _value(tree)})
            bar.update(1)
    bar.close()
    return examples


def first_operator_baseline(train: list[dict], examples: list[dict]) -> float:
    """Accuracy on ``examples`` of the rule fitted on ``train``: predict the most frequent label of the
    outermost operator. It reads one token; on LRA's distribution (mostly digits, up to 10 operands: MAX is
    usually 9, MIN 0) it scores about 0.33, which is where LRA's ListOps models end (0.36-0.38)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in train:
        counts[row["text"].split(maxsplit=1)[0]][row["label"]] += 1
    rule = {op: c.most_common(1)[0][0] for op, c in counts.items()}
    hits = sum(rule.get(row["text"].split(maxsplit=1)[0]) == row["label"] for row in examples)
    return hits / max(1, len(examples))


def tokenize(text: str) -> list[int]:
    """ListOps text -> ids (with the leading classification token); '[MAX' splits into '[' and 'MAX'."""
    ids = [1]
    for word in text.split():
        parts = ["[", word[1:]] if word.startswith("[") and len(word) > 1 else [word]
        for part in parts:
            if part not in _INDEX:
                raise ValueError(f"unknown ListOps token {part!r} in {text[:60]!r}")
            ids.append(_INDEX[part])
    return ids


_INDEX = {tok: i for i, tok in enumerate(VOCAB)}


def load_or_generate(spec: ListOpsSpec, cache_dir: Path) -> list[dict]:
    """The split for ``spec``, from ``cache_dir`` if generated before (written atomically)."""
    key = hashlib.sha1(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"listops-{key}.jsonl"
    if path.exists():
        with open(path) as f:
            return [json.loads(line) for line in f]
    examples = generate(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in examples)
    os.replace(tmp, path)
    return examples
