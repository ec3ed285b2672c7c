"""Text classification data from local CSV or JSONL files, and the tokenizers that encode it.

Each row has a text column and an integer label column (names configurable). Errors name the file and
the line. Tokenizers: the built-in byte-level one (LRA's Text task: one id per UTF-8 byte), a ListOps
one, or a tokenizer directory loaded with transformers (local files only).
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable
from pathlib import Path

from . import listops

BYTE_VOCAB_SIZE = 258  # pad 0, cls 1, bytes 2..257


def byte_tokenize(text: str) -> list[int]:
    return [1, *(b + 2 for b in text.encode("utf-8"))]


def load_rows(path: str | Path, text_column: str = "text", label_column: str = "label") -> list[dict]:
    """Rows {"text": str, "label": int} of a .csv or .jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    rows = []
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for name in (text_column, label_column):
                if reader.fieldnames is None or name not in reader.fieldnames:
                    raise ValueError(f"{path}: header {reader.fieldnames} has no column {name!r}")
            for row in reader:
                rows.append(_row(path, reader.line_num, row.get(text_column), row.get(label_column)))
    elif path.suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{line_no}: malformed JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
                rows.append(_row(path, line_no, record.get(text_column), record.get(label_column)))
    else:
        raise ValueError(f"data file {path} must end in .csv or .jsonl, got {path.suffix!r}")
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _row(path: Path, line_no: int, text, label) -> dict:
    if not isinstance(text, str):
        raise ValueError(f"{path}:{line_no}: missing or non-text 'text' value {text!r}")
    try:
        value = int(label)
        if isinstance(label, float) and label != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{path}:{line_no}: label {label!r} is not an integer class id") from None
    return {"text": text, "label": value, "line": line_no}


def check_labels(rows: list[dict], num_classes: int, source: str) -> None:
    for row in rows:
        if not 0 <= row["label"] < num_classes:
            where = f"{source}:{row['line']}" if "line" in row else source
            raise ValueError(f"{where}: label {row['label']} is outside the {num_classes} classes [0, {num_classes})")


def make_tokenizer(kind: str) -> tuple[Callable[[str], list[int]], int, int]:
    """(encode, vocab_size, pad_id) for 'bytes', 'listops' or a tokenizer directory."""
    if kind == "bytes":
        return byte_tokenize, BYTE_VOCAB_SIZE, 0
    if kind == "listops":
        return listops.tokenize, len(listops.VOCAB), 0
    path = Path(kind)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer {kind!r} is neither 'bytes' nor a tokenizer directory")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return (lambda text: tok(text, add_special_tokens=True)["input_ids"]), len(tok), pad


def encode(rows: list[dict], encode_fn, max_length: int) -> list[tuple[list[int], int]]:
    """Tokenize; sequences longer than max_length are truncated with one warning (documented)."""
    out, truncated = [], 0
    for row in rows:
        ids = encode_fn(row["text"])
        if len(ids) > max_length:
            ids, truncated = ids[:max_length], truncated + 1
        out.append((ids, row["label"]))
    if truncated:
        warnings.warn(f"{truncated} of {len(rows)} sequences were longer than {max_length} tokens and were truncated")
    return out
