"""``yoso predict`` and ``yoso info``: run a saved model on text; report versions and fast paths."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import torch


def _load_model(model_dir: Path):
    """(model, kind) with kind "mlm", "tokens" (token classification: MQAR) or "sequence"."""
    from .models.yoso import YosoConfig, YosoForMaskedLM, YosoForSequenceClassification, YosoForTokenClassification

    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a saved model directory")
    config = YosoConfig.from_pretrained(model_dir)
    architecture = " ".join(config.architectures or [])
    kind = "mlm" if "MaskedLM" in architecture else "tokens" if "TokenClassification" in architecture else "sequence"
    cls = {"mlm": YosoForMaskedLM, "tokens": YosoForTokenClassification}.get(kind, YosoForSequenceClassification)
    model = cls.from_pretrained(model_dir).eval()
    from .training.softmax import apply_recorded_attention

    apply_recorded_attention(model)
    return model, kind


def _tokenizer_spec(model_dir: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    for args_file in (model_dir / "args.json", model_dir.parent / "args.json"):
        if args_file.is_file():
            args = json.loads(args_file.read_text())
            return "listops" if args.get("task") == "listops" else args.get("tokenizer", "bytes")
    return str(model_dir)


def predict(model_dir: str, input_path: str, tokenizer: str | None, top_k: int) -> int:
    from .data.text import make_tokenizer

    model_dir = Path(model_dir)
    model, kind = _load_model(model_dir)
    if kind == "tokens":
        run = functools.partial(_recall, model, top_k=top_k)
    elif kind == "mlm":
        spec = _tokenizer_spec(model_dir, tokenizer)
        run = functools.partial(_fill_bytes, model, top_k=top_k) if spec == "bytes" else _pipeline_fill(model, spec, top_k)
    else:
        run = functools.partial(_classify, model, make_tokenizer(_tokenizer_spec(model_dir, tokenizer))[0], top_k=top_k)
    source = sys.stdin if input_path == "-" else open(input_path, encoding="utf-8")
    with source, torch.no_grad():
        for line in source:
            text = line.rstrip("\n")
            if text:
                print(json.dumps({"text": text[:80], "predictions": run(text)}))
    return 0


def _top(probs: torch.Tensor, names: dict, top_k: int) -> list[dict]:
    scores, labels = probs.topk(min(top_k, probs.numel()))
    return [{"label": names.get(int(i), str(int(i))), "score": round(float(s), 4)} for s, i in zip(scores, labels)]


def _classify(model, encode, text: str, top_k: int) -> list[dict]:
    ids = encode(text)[: model.config.max_position_embeddings]
    return _top(model(input_ids=torch.tensor([ids])).logits.softmax(-1)[0], model.config.id2label, top_k)


def _recall(model, text: str, top_k: int) -> list[dict]:
    """An MQAR model on a line of space-separated token ids: at each query (a key seen before in the sequence,
    right after which a value came), the predicted values."""
    from .data.mqar import query_positions

    try:
        ids = [int(word) for word in text.split()]
    except ValueError:
        raise ValueError(f"an MQAR model reads space-separated token ids, got {text[:60]!r}") from None
    cfg = model.config
    if len(ids) > cfg.max_position_embeddings or not all(0 <= i < cfg.vocab_size for i in ids):
        raise ValueError(f"expected at most {cfg.max_position_embeddings} token ids in [0, {cfg.vocab_size}), got "
                         f"{len(ids)} ids in [{min(ids)}, {max(ids)}]")  # fmt: skip
    queries = query_positions(ids, first_value=cfg.vocab_size - cfg.num_labels)
    if not queries:
        raise ValueError(f"no query in {text[:60]!r}: a query is a key that occurred before, followed by its value")
    probs = model(input_ids=torch.tensor([ids])).logits.softmax(-1)[0]  # (n, values)
    return [{"position": pos, "key": key, "values": _top(probs[pos], cfg.id2label, top_k)}
            for pos, key, _ in queries]  # fmt: skip


def _pipeline_fill(model, spec: str, top_k: int):
    """transformers' fill-mask pipeline with the model's tokenizer directory; [{"token", "score"}] per mask."""
    from transformers import AutoTokenizer, pipeline

    from .hub import local_dir

    tok = AutoTokenizer.from_pretrained(local_dir(spec, "--tokenizer", "'bytes'"), local_files_only=True)
    fill = pipeline("fill-mask", model=model, tokenizer=tok, top_k=top_k)

    def run(text: str):
        out = fill(text)
        rows = [out] if out and isinstance(out[0], dict) else out
        result = [[{"token": r["token_str"], "score": round(r["score"], 4)} for r in row] for row in rows]
        return result[0] if len(result) == 1 else result

    return run


MASK_MARK = "<mask>"


def _fill_bytes(model, text: str, top_k: int) -> list[dict]:
    """Fill-mask for a byte-level masked LM: each "<mask>" in ``text`` stands for one byte."""
    from .data.text import make_mlm_tokenizer

    encode, vocab = make_mlm_tokenizer("bytes")
    pieces = text.split(MASK_MARK)
    if len(pieces) == 1:
        raise ValueError(f"no {MASK_MARK} in {text[:60]!r}; a masked LM fills {MASK_MARK} tokens")
    ids = [vocab.cls_id]
    for i, piece in enumerate(pieces):
        ids += encode(piece) + ([vocab.mask_id] if i < len(pieces) - 1 else [])
    ids = (ids + [vocab.sep_id])[: model.config.max_position_embeddings]
    logits = model(input_ids=torch.tensor([ids])).logits[0]  # (n, vocab)
    result = []
    for pos in (i for i, t in enumerate(ids) if t == vocab.mask_id):
        probs = logits[pos, 2 : 2 + 256].softmax(-1)  # over the 256 byte ids only
        scores, bytes_ = probs.topk(top_k)
        result.append([{"token": _byte_str(int(b)), "score": round(float(p), 4)} for p, b in zip(scores, bytes_)])
    return result[0] if len(result) == 1 else result


def _byte_str(byte: int) -> str:
    return chr(byte) if 32 <= byte < 127 else f"\\x{byte:02x}"


def info() -> int:
    import transformers

    from . import __version__
    from .heap import memalign_shim_status
    from .ops.backend import active_paths

    facts = {
        "yoso_attention": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        **{f"fast_path_{k}": v for k, v in active_paths().items()},
        "memalign_shim": memalign_shim_status(),
    }
    try:
        import numba

        facts["numba"] = numba.__version__
    except ImportError:
        facts["numba"] = "not installed"
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key:<{width}}  {value}")
    return 0
