"""Masked-language-model data: local documents packed into fixed-length blocks, masked afresh each step.

Documents come from ``.txt`` files (one document per blank-line-separated block) or ``.jsonl`` files (one
object per line with a text field). They are tokenized, joined with the separator token and cut into
blocks of ``block_len`` ids, each framed by the classification and separator tokens (RoBERTa's
``<s> ... </s>``). Masking follows BERT / transformers' DataCollatorForLanguageModeling: 15% of the
ordinary tokens are chosen; 80% of those become the mask token, 10% a random token, 10% stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .jsonl import read_objects

MASK_PROB, MASK_TOKEN_SHARE, RANDOM_TOKEN_SHARE = 0.15, 0.8, 0.1


@dataclass(frozen=True)
class MlmVocab:
    """The ids masking needs; ``special`` ids are never chosen for prediction."""

    size: int
    pad_id: int
    mask_id: int
    cls_id: int
    sep_id: int

    @property
    def special(self) -> tuple[int, ...]:
        return (self.pad_id, self.cls_id, self.sep_id, self.mask_id)


def read_documents(path: str | Path, text_field: str = "text") -> list[str]:
    """The non-empty documents of a .txt or .jsonl file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    docs: list[str] = []
    if path.suffix == ".txt":
        current: list[str] = []
        for line in path.read_text(encoding="utf-8").splitlines() + [""]:
            if line.strip():
                current.append(line)
            elif current:
                docs.append("\n".join(current))
                current = []
    elif path.suffix in (".jsonl", ".json"):
        for line_no, record in read_objects(path):
            text = record.get(text_field)
            if not isinstance(text, str):
                raise ValueError(f"{path}:{line_no}: expected an object with a text field {text_field!r}")
            if text.strip():
                docs.append(text)
    else:
        raise ValueError(f"corpus file {path} must end in .txt or .jsonl, got {path.suffix!r}")
    if not docs:
        raise ValueError(f"{path}: empty corpus (no non-blank document)")
    return docs


def pack_blocks(docs: list[str], encode, vocab: MlmVocab, block_len: int, source: str) -> list[list[int]]:
    """Documents -> blocks of exactly ``block_len`` ids ([cls] body [sep]); the incomplete tail is dropped.

    ``encode`` maps text to ids without special tokens.
    """
    if block_len < 3:
        raise ValueError(f"--max-length must be >= 3 for masked-LM blocks, got {block_len}")
    stream: list[int] = []
    for doc in docs:
        stream += encode(doc) + [vocab.sep_id]
    body = block_len - 2
    if len(stream) < body:
        raise ValueError(f"{source}: {len(stream)} tokens in all, fewer than one block of --max-length {block_len}; "
                         "add text or lower --max-length")  # fmt: skip
    return [[vocab.cls_id, *stream[i : i + body], vocab.sep_id] for i in range(0, len(stream) - body + 1, body)]


def mask_tokens(ids: torch.Tensor, vocab: MlmVocab, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input ids, labels): labels hold the original id where a token was chosen, -100 elsewhere."""
    probs = torch.full(ids.shape, MASK_PROB)
    probs[torch.isin(ids, torch.tensor(vocab.special))] = 0.0
    chosen = torch.bernoulli(probs, generator=generator).bool()
    labels = ids.masked_fill(~chosen, -100)
    draw = torch.rand(ids.shape, generator=generator)
    to_mask = chosen & (draw < MASK_TOKEN_SHARE)
    to_random = chosen & (draw >= MASK_TOKEN_SHARE) & (draw < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE)
    random_ids = torch.randint(0, vocab.size, ids.shape, generator=generator)
    masked = torch.where(to_mask, vocab.mask_id, torch.where(to_random, random_ids, ids))
    return masked, labels
