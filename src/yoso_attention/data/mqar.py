"""Multi-query associative recall (MQAR; Arora et al. 2023, Zoology), for an encoder.

A sequence of ``length`` tokens holds ``num_pairs`` key-value pairs first, then each key once more as a
query, at positions with power-law gaps (small gaps are likely), filler everywhere else:

    k1 v1 k2 v2 k3 v3 . . k2 . k1 . . . . k3 . .      labels: the value of k2 at k2's query position, ...

Keys are distinct within a sequence, and so are values. The label of a query sits at the query's own
position (token classification): in an encoder the answer exists only in the key-value prefix, so the task
is well defined bidirectionally. Labels are value indices (value id - ``first_value``), -100 elsewhere.

Vocabulary of ``vocab_size`` ids: 0 padding (never in the data), 1 filler, keys ``[2, first_value)``, values
``[first_value, vocab_size)``. Filler ``"random"`` draws filler tokens from the values and from the keys
that the sequence does not use, so every query still matches exactly one key of the prefix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PAD_ID, FILLER_ID, FIRST_KEY = 0, 1, 2
FILLERS = ("zero", "random")


@dataclass(frozen=True)
class MqarSpec:
    """Parameters of a generated split (all part of the cache key)."""

    num_examples: int = 1000
    length: int = 256
    num_pairs: int = 16
    vocab_size: int = 8192
    power_a: float = 0.01
    filler: str = "zero"
    seed: int = 0

    @property
    def first_value(self) -> int:
        return FIRST_KEY + (self.vocab_size - FIRST_KEY) // 2

    @property
    def num_values(self) -> int:
        return self.vocab_size - self.first_value

    def validate(self) -> None:
        """Errors name the command-line options of ``yoso train --task mqar``."""
        if self.num_pairs < 1:
            raise ValueError(f"--mqar-pairs must be >= 1, got {self.num_pairs}")
        if 4 * self.num_pairs > self.length:
            raise ValueError(f"--mqar-pairs {self.num_pairs} needs --max-length >= {4 * self.num_pairs} (the pairs, "
                             f"then a query slot per pair in the rest), got {self.length}")  # fmt: skip
        if self.first_value - FIRST_KEY < self.num_pairs or self.num_values < self.num_pairs:
            need = FIRST_KEY + 2 * self.num_pairs
            raise ValueError(f"--mqar-vocab-size {self.vocab_size} has too few keys or values for --mqar-pairs "
                             f"{self.num_pairs}: need >= {need} (2 special ids, a key and a value per pair)")
        if not self.power_a > 0:
            raise ValueError(f"--mqar-power-a must be > 0, got {self.power_a}")
        if self.filler not in FILLERS:
            raise ValueError(f"--mqar-filler {self.filler!r}: expected one of {FILLERS}")


_CHUNK_FLOATS = 1 << 22  # random numbers drawn at once by the row-wise samplers below


def _row_chunks(rows: int, width: int):
    step = max(1, _CHUNK_FLOATS // max(1, width))
    return (slice(r, min(rows, r + step)) for r in range(0, rows, step))


def _top_k(log_weights: np.ndarray, rng: np.random.Generator, rows: int, size: int) -> np.ndarray:
    """(rows, size) distinct indices into log_weights per row, drawn without replacement with probabilities
    proportional to exp(log_weights) (Gumbel top-k), in row chunks of bounded memory."""
    out = np.empty((rows, size), dtype=np.int64)
    for chunk in _row_chunks(rows, len(log_weights)):
        gumbel = -np.log(-np.log(rng.random((chunk.stop - chunk.start, len(log_weights)))))
        out[chunk] = np.argpartition(-(log_weights + gumbel), size - 1, axis=1)[:, :size]
    return out


def _distinct(rng: np.random.Generator, low: int, high: int, rows: int, size: int) -> np.ndarray:
    """(rows, size) integers in [low, high), distinct within each row, uniformly over such draws."""
    return low + rng.permuted(_top_k(np.zeros(high - low), rng, rows, size), axis=1)


def _row_members(x: np.ndarray, sets: np.ndarray, num_ids: int) -> np.ndarray:
    """(rows, n) bool, x[r, i] in sets[r], for ids in [0, num_ids): through a (rows, num_ids) table in row chunks,
    not a (rows, n, set size) comparison (1.1 GB for 5120 rows of 2048 tokens and 120 pairs)."""
    out = np.empty(x.shape, dtype=bool)
    for chunk in _row_chunks(len(x), num_ids):
        table = np.zeros((chunk.stop - chunk.start, num_ids), dtype=bool)  # (rows, num_ids)
        np.put_along_axis(table, sets[chunk], True, axis=1)
        out[chunk] = np.take_along_axis(table, x[chunk], axis=1)
    return out


def _gaps(rng: np.random.Generator, rows: int, space: int, size: int, power_a: float) -> np.ndarray:
    """(rows, size) distinct slots in [0, space) with P(slot g) ~ (g + 1) ** (power_a - 1): Zoology's gaps."""
    return _top_k((power_a - 1) * np.log(np.arange(1, space + 1)), rng, rows, size)


def generate(spec: MqarSpec) -> np.ndarray:
    """(num_examples, length) token ids, uint16 or int32; labels follow from the ids (``labels``)."""
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    n, pairs = spec.num_examples, spec.num_pairs
    keys = _distinct(rng, FIRST_KEY, spec.first_value, n, pairs)  # (n, pairs)
    values = _distinct(rng, spec.first_value, spec.vocab_size, n, pairs)  # (n, pairs)
    ids = np.full((n, spec.length), FILLER_ID, dtype=np.int64)
    ids[:, 0 : 2 * pairs : 2], ids[:, 1 : 2 * pairs : 2] = keys, values
    if spec.filler == "random":
        tail = ids[:, 2 * pairs :]
        tail[:] = rng.integers(FIRST_KEY, spec.vocab_size, tail.shape)
        used = _row_members(tail, keys, spec.vocab_size)  # a filler equal to one of the row's keys
        tail[used] = rng.integers(spec.first_value, spec.vocab_size, int(used.sum()))  # becomes a value
    space = (spec.length - 2 * pairs) // 2
    slots = 2 * pairs + 2 * _gaps(rng, n, space, pairs, spec.power_a)  # (n, pairs) query positions
    np.put_along_axis(ids, slots, keys, axis=1)
    return ids.astype(np.uint16 if spec.vocab_size <= 2**16 else np.int32)


def labels(ids: np.ndarray, num_pairs: int, first_value: int) -> np.ndarray:
    """(batch, n) labels of (batch, n) ids: at each position after the prefix whose token is one of the row's
    keys, the index of that key's value; -100 elsewhere."""
    ids = ids.astype(np.int64)
    keys, values = ids[:, 0 : 2 * num_pairs : 2], ids[:, 1 : 2 * num_pairs : 2]  # (batch, pairs)
    value_of = np.full((len(ids), int(ids.max(initial=0)) + 1), -100, dtype=np.int64)  # (batch, ids): key -> label
    np.put_along_axis(value_of, keys, values - first_value, axis=1)
    out = np.full(ids.shape, -100, dtype=np.int64)
    out[:, 2 * num_pairs :] = np.take_along_axis(value_of, ids[:, 2 * num_pairs :], axis=1)
    return out


def query_positions(ids: list[int], first_value: int) -> list[tuple[int, int, int]]:
    """(query position, key, position of the key in the prefix) for each key token that occurred before,
    followed by a value there: how ``yoso predict`` finds the queries of a sequence it did not generate."""
    first_seen: dict[int, int] = {}
    out = []
    for pos, token in enumerate(ids):
        if not FIRST_KEY <= token < first_value:
            continue
        if token in first_seen:
            out.append((pos, token, first_seen[token]))
        elif pos + 1 < len(ids) and ids[pos + 1] >= first_value:
            first_seen[token] = pos
    return out


def chance(num_pairs: int) -> dict[str, float]:
    """Accuracy of guessing without retrieval: each query's value among the sequence's ``num_pairs`` values
    (per query), and all queries of a sequence right by guessing a permutation of them (per sequence)."""
    return {"chance": 1.0 / num_pairs, "sequence_chance": 1.0 / math.factorial(num_pairs)}


def load_or_generate(spec: MqarSpec, cache_dir: Path) -> np.ndarray:
    """The split for ``spec``, from ``cache_dir`` if generated before (``.npy``, written atomically)."""
    key = hashlib.sha1(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"mqar-{key}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    ids = generate(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, ids, allow_pickle=False)
    os.replace(tmp, path)
    return ids
