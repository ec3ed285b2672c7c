"""Text classification data from local CSV or JSONL files, and the tokenizers that encode it.

Each row has a text column and an integer label column (names configurable). Errors name the file and
the line. Tokenizers: the built-in byte-level one (LRA's Text task: one id per UTF-8 byte), a ListOps
one, or a tokenizer directory loaded with transformers (local files only).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable
from pathlib import Path

from . import listops
from .jsonl import read_objects
from .mlm import MlmVocab

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
        for line_no, record in read_objects(path):
            rows.append(_row(path, line_no, record.get(text_column), record.get(label_column)))
    else:
        raise ValueError(f"data file {path} must end in .csv or .jsonl, got {path.suffix!r}")
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _row(path: Path, line_no: int, text, label) -> dict:
    if not isinstance(text, str):
        raise ValueError(f"{path}:{line_no}: missing or non-text 'text' value {text!r}")
    if isinstance(label, str) and label.strip() and not _is_number(label):
        return {"text": text, "label": label.strip(), "line": line_no, "path": path}  # a class name
    try:
        value = int(label)
        if isinstance(label, float) and label != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{path}:{line_no}: label {label!r} is neither an integer class id nor a class name") from None
    return {"text": text, "label": value, "line": line_no, "path": path}


def class_names(rows: list[dict], label_names: list[str] | None) -> list[str] | None:
    """The class names: --label-names, else the sorted distinct names of the rows when their labels are names
    (None when they are integer ids). Mixing ids and names needs --label-names."""
    if label_names:
        return list(label_names)
    named = [row for row in rows if isinstance(row["label"], str)]
    if not named:
        return None
    if len(named) < len(rows):
        row = named[0]
        raise ValueError(f"{row['path']}:{row['line']}: label {row['label']!r} is a class name but other labels are "
                         "integer ids; pass --label-names to say which name is which id")  # fmt: skip
    return sorted({row["label"] for row in rows})


def label_ids(rows: list[dict], num_classes: int, names: list[str] | None) -> None:
    """In place: class names -> ids (by ``names``); every id checked against the number of classes."""
    index = {name: i for i, name in enumerate(names or [])}
    for row in rows:
        where = f"{row['path']}:{row['line']}"
        if isinstance(row["label"], str):
            if row["label"] not in index:
                raise ValueError(f"{where}: label {row['label']!r} is not one of the class names {names}")
            row["label"] = index[row["label"]]
        if not 0 <= row["label"] < num_classes:
            raise ValueError(f"{where}: label {row['label']} is outside the {num_classes} classes [0, {num_classes})")


def _auto_tokenizer(kind: str):
    from transformers import AutoTokenizer

    from ..hub import local_dir

    return AutoTokenizer.from_pretrained(local_dir(kind, "--tokenizer", "'bytes'"), local_files_only=True)


def make_tokenizer(kind: str) -> tuple[Callable[[str], list[int]], int, int]:
    """(encode, vocab_size, pad_id) for 'bytes', 'listops' or a tokenizer directory (or cached hub id)."""
    if kind == "bytes":
        return byte_tokenize, BYTE_VOCAB_SIZE, 0
    if kind == "listops":
        return listops.tokenize, len(listops.VOCAB), 0
    tok = _auto_tokenizer(kind)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return (lambda text: tok(text, add_special_tokens=True)["input_ids"]), len(tok), pad


def make_mlm_tokenizer(kind: str) -> tuple[Callable[[str], list[int]], MlmVocab]:
    """(encode without special tokens, special ids) for masked-LM training. 'bytes' adds [sep] 258 and
    [mask] 259 to the byte vocabulary; a tokenizer directory must have a mask token."""
    if kind == "bytes":
        return (lambda text: [b + 2 for b in text.encode("utf-8")]), MlmVocab(BYTE_VOCAB_SIZE + 2, 0, 259, 1, 258)
    if kind == "listops":
        raise ValueError("--tokenizer listops has no mask token; use 'bytes' or a tokenizer directory for --task mlm")
    tok = _auto_tokenizer(kind)
    if tok.mask_token_id is None:
        raise ValueError(f"tokenizer {kind!r} has no mask token; --task mlm needs one (e.g. RoBERTa's <mask>)")
    cls = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    if cls is None or sep is None or tok.pad_token_id is None:
        raise ValueError(f"tokenizer {kind!r} lacks a cls/bos, sep/eos or pad token; --task mlm needs all three")
    vocab = MlmVocab(len(tok), tok.pad_token_id, tok.mask_token_id, cls, sep)
    return (lambda text: tok(text, add_special_tokens=False)["input_ids"]), vocab


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
