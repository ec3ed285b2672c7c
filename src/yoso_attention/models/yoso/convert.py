"""Longer models from shorter ones: copy a checkpoint with its position table repeated to a new length.

The scheme of the YOSO authors and of Longformer (Beltagy et al. 2020, sec. 5): the learned position
embeddings of an n-token model are copied over and over into the table of the longer model, so every
position starts from a trained vector and local position differences keep their meaning; every other
weight is unchanged. Sources: YOSO checkpoints (ours or transformers'), kept as they are apart from the
table, and RoBERTa / BERT checkpoints, whose encoder maps onto YOSO's parameter names and becomes a
YosoForMaskedLM; their attention changes from softmax to YOSO, so such a model needs continued MLM
pretraining before it is useful.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ...ops.hashing import padded_dim
from .configuration_yoso import YosoConfig

POSITION_KEY = "embeddings.position_embeddings.weight"
FIRST_POSITION = 2  # YOSO and RoBERTa: positions start at row 2 (rows 0, 1 belong to padding); BERT: row 0
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "vocab.txt", "added_tokens.json")  # fmt: skip
CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size",
                 "initializer_range", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id")  # fmt: skip
# RoBERTa's MLM head -> YOSO's (BERT's already has YOSO's names).
ROBERTA_HEAD = {"lm_head.dense.": "cls.predictions.transform.dense.",
                "lm_head.layer_norm.": "cls.predictions.transform.LayerNorm.",
                "lm_head.decoder.": "cls.predictions.decoder.", "lm_head.bias": "cls.predictions.bias"}  # fmt: skip


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """Weights of a save_pretrained directory: model.safetensors, else pytorch_model.bin (tensors only)."""
    safetensors, pickled = model_dir / "model.safetensors", model_dir / "pytorch_model.bin"
    try:
        if safetensors.exists():
            return load_file(safetensors)
        if pickled.exists():
            return torch.load(pickled, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors' and torch's errors for truncated or foreign files
        raise OSError(f"could not read the weights in {model_dir}: truncated or corrupt ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc  # fmt: skip
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or pytorch_model.bin; expected a save_pretrained directory")


def repeat_positions(table: torch.Tensor, first: int, old_length: int, new_length: int) -> torch.Tensor:
    """A (new_length + 2, h) YOSO position table: rows 0, 1 from ``table``'s padding rows (zeros if it has
    none), rows 2 .. new_length + 1 the source's ``old_length`` trained rows repeated in order."""
    trained = table[first : first + old_length]  # (old_length, h)
    reps = -(-new_length // old_length)
    head = table[:FIRST_POSITION] if first == FIRST_POSITION else torch.zeros(FIRST_POSITION, table.shape[1])
    return torch.cat([head, trained.repeat(reps, 1)[:new_length]]).to(table.dtype).contiguous()


def _from_encoder(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    """RoBERTa / BERT weights -> YosoForMaskedLM names (the pooler and BERT's NSP head are dropped)."""
    mapped = {}
    for key, value in state.items():
        if key.startswith(prefix + "."):
            if ".pooler." in key or key.endswith("position_ids"):
                continue
            mapped["yoso." + key[len(prefix) + 1 :]] = value
            continue
        for old, new in ROBERTA_HEAD.items():
            if key.startswith(old):
                mapped[new + key[len(old) :]] = value
                break
        else:
            if key.startswith("cls.predictions."):
                mapped[key] = value
    return mapped


# The length rule (docs/studies.md, "Where sampled yoso breaks"): a YOSO model used at r times the length it was trained
# at meets r times the distractors; one more bit per doubling keeps their expected collisions per hash (~n 2^-tau)
# where they were. Models trained on MQAR at 128 tokens: tau 8 -> 12 took YOSO-E from 0.48 to 0.99 at 4096 tokens.
# Each bit lowers the own key's collision probability, so m keeps the chance of missing it under every hash below
# MISS_RATE. Measured a bit: 0.956 (zero filler, 128 tokens), 0.914-0.950 on the stronger recall head of random-filler
# models at 1024-8192 tokens. The rule takes 0.91: at 8192 tokens (tau 14) m 23; 0.93's 16 left one of three chains
# 2.5 points below softmax (0.975), which 24 hashes took to 0.99 (docs/studies.md, "Random filler at 8192 tokens").
OWN_COLLISION_PER_BIT = 0.91
MISS_RATE = 1e-3
DEFAULT_TAU, DEFAULT_M = YosoConfig.hash_code_len, YosoConfig.num_hash  # a config.json without them


def hashing_for_length(hash_code_len: int, num_hash: int, old_length: int, new_length: int,
                       max_hash_code_len: int | None = None) -> tuple[int, int]:  # fmt: skip
    """(tau, m) for a YOSO model trained at ``old_length`` tokens and used at ``new_length``: tau + log2 of the
    length ratio (rounded; unchanged when not longer; at most ``max_hash_code_len``, the fast hash's limit), and m
    raised where the own key would miss under all hashes more often than MISS_RATE."""
    if new_length <= old_length:
        return hash_code_len, num_hash
    tau = hash_code_len + round(math.log2(new_length / old_length))
    tau = tau if max_hash_code_len is None else max(hash_code_len, min(tau, max_hash_code_len))
    return tau, max(num_hash, hashes_for_misses(tau))


def scaled_hashing(hash_code_len: int, num_hash: int, old_length: int, new_length: int, given_tau: int | None = None,
                   given_m: int | None = None, max_hash_code_len: int | None = None) -> tuple[int, int]:  # fmt: skip
    """(tau, m) at ``new_length`` for hashing chosen at ``old_length``: each as given, else by the length rule (a
    given tau still gets the hashes its misses need at the longer length)."""
    if given_tau is None:
        tau, m = hashing_for_length(hash_code_len, num_hash, old_length, new_length, max_hash_code_len)
    else:
        tau, m = given_tau, max(num_hash, hashes_for_misses(given_tau)) if new_length > old_length else num_hash
    return tau, m if given_m is None else given_m


def hashes_for_misses(hash_code_len: int) -> int:
    """The fewest hashes under all of which the own key misses with probability below MISS_RATE at this tau."""
    return math.ceil(math.log(MISS_RATE) / math.log1p(-(OWN_COLLISION_PER_BIT**hash_code_len)))


def extend_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, max_length: int,
                      hash_code_len: int | None = None, num_hash: int | None = None) -> str:  # fmt: skip
    """Write ``dst``: the checkpoint in ``src`` with a position table for ``max_length`` tokens.

    A YOSO source's tau and m become ``hash_code_len`` and ``num_hash`` where given, else what the length rule
    (``hashing_for_length``) gives for the longer length. Returns a one-line description of the change.
    ``dst`` appears complete or not at all.
    """
    src, dst = Path(src), Path(dst)
    config_path = src / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{src}: no config.json; expected a save_pretrained model directory")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; choose a new output directory")
    config = json.loads(config_path.read_text())
    kind = config.get("model_type")
    if kind not in ("yoso", "roberta", "bert"):
        raise ValueError(f"{src}: model_type {kind!r}; expected a yoso, roberta or bert checkpoint")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"--max-length must be a positive integer, got {max_length!r}")
    for flag, value in (("--hash-code-len", hash_code_len), ("--num-hash", num_hash)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    state = load_state_dict(src)
    if kind == "yoso":
        old_length, first, prefix = config["max_position_embeddings"], FIRST_POSITION, "yoso"
        key = next((k for k in state if k.endswith(POSITION_KEY)), None)
        softmax = config.get("attention_kind") == "softmax"  # the softmax baseline: no hashing to adapt
        hashing = {} if softmax else _hashing(config, old_length, max_length, hash_code_len, num_hash)
        new_config = {**config, "max_position_embeddings": max_length, **hashing}
        by_rule = " by the length rule" if hash_code_len is None and num_hash is None else ""
        note = "softmax attention" if softmax else (
            f"tau {config.get('hash_code_len', DEFAULT_TAU)} -> {new_config['hash_code_len']}, m "
            f"{config.get('num_hash', DEFAULT_M)} -> {new_config['num_hash']}{by_rule}")  # fmt: skip
        note += "; every other weight unchanged"
    else:
        prefix = "roberta" if kind == "roberta" else "bert"
        first = FIRST_POSITION if kind == "roberta" else 0
        old_length = config["max_position_embeddings"] - first
        state = _from_encoder(state, prefix)
        key = f"yoso.{POSITION_KEY}"
        new_config = {name: config[name] for name in CONFIG_FIELDS if name in config}
        new_config.update(model_type="yoso", architectures=["YosoForMaskedLM"], max_position_embeddings=max_length)
        given = {"hash_code_len": hash_code_len, "num_hash": num_hash}
        new_config.update({name: value for name, value in given.items() if value is not None})
        note = (f"{kind} encoder mapped onto YosoForMaskedLM; its attention is now YOSO, so continue MLM "
                "pretraining (yoso train --task mlm --init-from DST) before using it")  # fmt: skip
    if key is None or key not in state:
        raise ValueError(f"{src}: no position table ({POSITION_KEY}) among the weights")
    state[key] = repeat_positions(state[key], first, old_length, max_length)
    _write_atomically(src, dst, new_config, state)
    return f"{old_length} -> {max_length} positions (the source's rows repeated); {note}"


def _hashing(config: dict, old_length: int, new_length: int, hash_code_len: int | None,
             num_hash: int | None) -> dict:  # fmt: skip
    """The extended config's hash_code_len and num_hash: as given, else by the length rule."""
    fast_limit = None
    if config.get("use_fast_hash", True):
        fast_limit = padded_dim(config["hidden_size"] // config["num_attention_heads"])
    if hash_code_len is not None and fast_limit is not None and hash_code_len > fast_limit:
        raise ValueError(f"--hash-code-len {hash_code_len}: this model hashes with the fast hash, which allows at most "
                         f"its head dim padded to a power of two, {fast_limit}")  # fmt: skip
    old_tau, old_m = config.get("hash_code_len", DEFAULT_TAU), config.get("num_hash", DEFAULT_M)
    tau, m = scaled_hashing(old_tau, old_m, old_length, new_length, hash_code_len, num_hash, fast_limit)
    return {"hash_code_len": tau, "num_hash": m}


def _write_atomically(src: Path, dst: Path, config: dict, state: dict) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        # Cloned: tied weights loaded from a .bin share storage, which safetensors refuses.
        save_file({k: v.clone().contiguous() for k, v in state.items()}, tmp / "model.safetensors",
                  metadata={"format": "pt"})  # fmt: skip
        for name in TOKENIZER_FILES:
            if (src / name).exists():
                shutil.copy2(src / name, tmp / name)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
