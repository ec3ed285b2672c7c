"""Diagnostic variants of the attention for the MQAR study (docs/studies.md, "Why YOSO stays at chance"): runs
`yoso train` with one variant patched in. Not library code; each variant isolates one difference between YOSO and
softmax attention.

    .venv/bin/python benchmarks/mqar_diagnosis.py VARIANT train --task mqar ... --attention yoso-e|softmax

    .venv/bin/python benchmarks/mqar_diagnosis.py --norms RUN_DIR ...     # mean |q|, |k| per layer: init vs trained

    .venv/bin/python benchmarks/mqar_diagnosis.py --shares RUN_DIR ...    # where the queries attend, per layer/head

    .venv/bin/python benchmarks/mqar_diagnosis.py --sampling RUN_DIR M ...  # query accuracy: YOSO-E, sampling with M

    .venv/bin/python benchmarks/mqar_diagnosis.py --lengths RUN_DIR L ... [--hashes M ...] [--pairs P ...]
                                    [--taus T ...] [--random-filler]
                                    # query accuracy at length L (positions repeated), sampling with M, P pairs, tau T
    .venv/bin/python benchmarks/mqar_diagnosis.py --mass RUN_DIR L ... [--random-filler]
                                    # collision probability: own value vs distractors, at length L
    --sequences N: evaluate on N sequences (--lengths: 64, --mass: 4)
    --expectation: --lengths also in YOSO-E (the m -> infinity limit of sampling)
    --random-filler: the sequences' filler is random keys and values (--mqar-filler random), whatever the run trained on

VARIANT (comma-separated, or "none"):
  nonorm    YOSO: no per-head L2 normalisation of the attention output
  rownorm   YOSO-E: divide each output row by its total weight (as softmax does) instead of L2-normalising it
  smnorm    softmax: L2-normalise each head's output, as YOSO does
  smunit    softmax on unit q and k with a fixed scale (env SCALE, default 5): bounded sharpness, as YOSO's
            (1 - theta/pi)^tau has (log-contrast tau ln 2 between an aligned and an orthogonal key)
  nopos     no position embeddings (zero and frozen): the task needs none, the convolution gives locality
  tiedqk    each key projection starts as a copy of its query projection (then trained apart)
  noffn     no feed-forward blocks: each layer is attention and its residual LayerNorm
  preln     pre-LayerNorm layers and a final LayerNorm (the authors' LRA models) instead of post-LayerNorm
  decayonly AdamW decay env DECAY (default 1.0) on the parameters whose name contains one of env DECAY_NAMES
            (comma-separated), --weight-decay on the others
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from yoso_attention import YosoForTokenClassification
from yoso_attention.cli import main
from yoso_attention.data import mqar
from yoso_attention.models.yoso import layers_yoso
from yoso_attention.models.yoso.convert import extend_checkpoint
from yoso_attention.ops.reference import expectation_matrix
from yoso_attention.training import loop, softmax
from yoso_attention.training.args import TrainArgs
from yoso_attention.training.data import load_splits, mqar_spec


def no_output_norm():
    layers_yoso.normalize_rows = lambda x: x


def row_sum_norm():
    expectation = layers_yoso.yoso_expectation

    def divided(q, k, v, mask, hash_code_len):
        out = expectation(q, k, v, mask, hash_code_len=hash_code_len)
        total = expectation(q, k, torch.ones_like(v[..., :1]), mask, hash_code_len=hash_code_len)  # (..., n, 1)
        return out / (total + 1e-6)

    layers_yoso.yoso_expectation = divided
    no_output_norm()


def softmax_forward(unit_qk: bool, scale: float | None, normalise_output: bool):
    def forward(self, hidden_states, mask=None, output_attentions=False):
        q, k, v = (self._split_heads(f(hidden_states)) for f in (self.query, self.key, self.value))
        if unit_qk:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn_mask = None if mask is None else mask[:, None, None, :]
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale).transpose(1, 2)
        if normalise_output:
            context = F.normalize(context, dim=-1)
        return self._merge_heads(context, v, mask), None

    softmax.SoftmaxSelfAttention.forward = forward


def build_model_then(change):
    """Apply change(model) to the model `yoso train` builds, before training or resuming."""
    build = loop.build_model

    def built(*args, **kwargs):
        model = build(*args, **kwargs)
        change(model)
        return model

    loop.build_model = built


def no_positions(model):
    model.yoso.embeddings.position_embeddings.weight.data.zero_()
    model.yoso.embeddings.position_embeddings.weight.requires_grad_(False)


def tied_qk_init(model):
    for attn in (layer.attention.self for layer in model.yoso.encoder.layer):
        attn.key.load_state_dict(attn.query.state_dict())


def pre_layer_norm():
    def attention(self, hidden_states, mask=None, output_attentions=False):
        context, weights = self.self(self.output.LayerNorm(hidden_states), mask, output_attentions)
        return hidden_states + self.output.dropout(self.output.dense(context)), weights

    def feed_forward(self, x):
        return x + self.output.dropout(self.output.dense(self.intermediate(self.output.LayerNorm(x))))

    encoder_init, encoder_forward = layers_yoso.YosoEncoder.__init__, layers_yoso.YosoEncoder.forward

    def init(self, config):
        encoder_init(self, config)
        self.final_layer_norm = torch.nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, *args, **kwargs):
        hidden, all_hidden, attentions = encoder_forward(self, *args, **kwargs)
        return self.final_layer_norm(hidden), all_hidden, attentions

    layers_yoso.YosoAttention.forward, layers_yoso.YosoLayer._feed_forward = attention, feed_forward
    layers_yoso.YosoEncoder.__init__, layers_yoso.YosoEncoder.forward = init, forward


def decay_only():
    names, decay = os.environ["DECAY_NAMES"].split(","), float(os.environ.get("DECAY", "1.0"))

    def groups(model, args):
        picked = [any(name in full for name in names) for full, _ in model.named_parameters()]
        params = [param for _, param in model.named_parameters()]
        return [
            {"params": [p for p, pick in zip(params, picked) if not pick], "weight_decay": args.weight_decay},
            {"params": [p for p, pick in zip(params, picked) if pick], "weight_decay": decay},
        ]

    loop.parameter_groups = groups


VARIANTS = {
    "nonorm": no_output_norm,
    "rownorm": row_sum_norm,
    "smnorm": lambda: softmax_forward(unit_qk=False, scale=None, normalise_output=True),
    "smunit": lambda: softmax_forward(unit_qk=True, scale=float(os.environ.get("SCALE", "5")), normalise_output=False),
    "nopos": lambda: build_model_then(no_positions),
    "tiedqk": lambda: build_model_then(tied_qk_init),
    "noffn": lambda: setattr(layers_yoso.YosoLayer, "_feed_forward", lambda self, x: x),
    "preln": pre_layer_norm,
    "decayonly": decay_only,
}


def print_norms(run_dirs: list[str]) -> None:
    """Mean |q| and |k| per layer on 32 eval sequences, for a fresh model (seed 0) and the run's last checkpoint."""
    for run in map(Path, run_dirs):
        trained, ids, _ = _load_run(run)
        torch.manual_seed(0)
        fresh = YosoForTokenClassification(trained.config).eval()
        for label, model in (("init", fresh), ("trained", trained)):
            with torch.no_grad():
                hidden = model.yoso(input_ids=ids, output_hidden_states=True).hidden_states
                norms = []
                for i, layer in enumerate(model.yoso.encoder.layer):
                    attn = layer.attention.self
                    q, k = (attn._split_heads(f(hidden[i])).norm(dim=-1).mean() for f in (attn.query, attn.key))
                    norms.append(f"layer {i}: |q| {q:.2f} |k| {k:.2f}")
            print(f"{run.name} {label}: " + "; ".join(norms))


def _load_model(model_dir: Path):
    model = YosoForTokenClassification.from_pretrained(model_dir).eval()
    if getattr(model.config, "attention_kind", None) == "softmax":
        softmax.use_softmax_attention(model)
    return model


def _run_args(run: Path) -> TrainArgs:
    return TrainArgs(**json.loads((run / "args.json").read_text()))


def _query_rows(ids: torch.Tensor, num_pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sequence, query position, key position) of every labelled query in ``ids``, as three (queries,) tensors
    (the prefix's keys again after the prefix; random filler's other key tokens are not queries)."""
    keys = ids[:, 0 : 2 * num_pairs : 2]  # (batch, pairs)
    hit = ids[:, 2 * num_pairs :, None] == keys[:, None, :]  # (batch, n - 2 pairs, pairs)
    batch, position, pair = hit.nonzero(as_tuple=True)
    return batch, position + 2 * num_pairs, 2 * pair


def _load_run(run: Path):
    """(trained model, 32 eval sequences, training arguments) of a run directory."""
    args = _run_args(run)
    return _load_model(run / "last"), load_splits(args)[0]["eval"].collate(list(range(32)))[0], args


def _query_accuracy(model, ids: torch.Tensor, args: TrainArgs, chunk: int = 8) -> float:
    labels = torch.from_numpy(mqar.labels(ids.numpy(), args.mqar_pairs, mqar_spec(args).first_value))
    picked = labels != -100
    torch.manual_seed(0)
    with torch.no_grad():  # ``chunk`` sequences at a time: YOSO-E's (n, n) matrices at 4096+ tokens
        predicted = torch.cat([model(input_ids=part).logits.argmax(-1) for part in ids.split(chunk)])
    return (predicted[picked] == labels[picked]).float().mean().item()


def attention_maps(model, ids) -> list[torch.Tensor]:
    """(batch, heads, n, n) row-normalised attention of each layer: softmax's, or YOSO's collision probabilities
    (what sampling estimates), from the q and k of that layer's input."""
    with torch.no_grad():
        hidden = model.yoso(input_ids=ids, output_hidden_states=True).hidden_states
        maps = []
        for i, layer in enumerate(model.yoso.encoder.layer):
            attn = layer.attention.self
            q, k = (attn._split_heads(f(hidden[i])) for f in (attn.query, attn.key))  # (batch, heads, n, d)
            if isinstance(attn, softmax.SoftmaxSelfAttention):
                weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
            else:
                weights = expectation_matrix(q, k, hash_code_len=model.config.hash_code_len)
            maps.append(weights / weights.sum(-1, keepdim=True))
    return maps


def print_shares(run_dirs: list[str]) -> None:
    """Mean share of each query position's attention on its key's position in the prefix, on that key's value
    (the next position), on the other values, on itself and on the rest, per layer and head."""
    for run in map(Path, run_dirs):
        model, ids, args = _load_run(run)
        first_value = mqar_spec(args).first_value
        batch, query, key = _query_rows(ids, args.mqar_pairs)
        is_value = ids >= first_value  # (batch, n)
        for i, weights in enumerate(attention_maps(model, ids)):
            for h in range(weights.shape[1]):
                row = weights[batch, h, query]  # (queries, n)
                own_value = row.gather(1, (key + 1)[:, None]).squeeze(1)
                other_values = (row * is_value[batch]).sum(1) - own_value
                shares = {
                    "key": row.gather(1, key[:, None]).squeeze(1),
                    "its value": own_value,
                    "other values": other_values,
                    "self": row.gather(1, query[:, None]).squeeze(1),
                }
                shares["rest"] = 1 - sum(shares.values())
                text = ", ".join(f"{name} {share.mean():.3f}" for name, share in shares.items())
                print(f"{run.name} layer {i} head {h}: {text}")


def print_sampling_accuracy(run_dir: str, num_hashes: list[int]) -> None:
    """Query accuracy of a run's last checkpoint on 32 eval sequences in YOSO-E and sampled with each number of
    hashes (the run's own hash and tau; one draw, seed 0)."""
    model, ids, args = _load_run(Path(run_dir))
    for num_hash in [None, *num_hashes]:
        model.config.use_expectation = num_hash is None
        model.config.num_hash = num_hash or model.config.num_hash
        accuracy = _query_accuracy(model, ids, args)
        print(f"{Path(run_dir).name} {'YOSO-E' if num_hash is None else f'sampled, m = {num_hash}'}: {accuracy:.3f}")


def _at_length(run: Path, length: int, num_sequences: int, num_pairs: int | None = None, filler: str | None = None):
    """(the run's last checkpoint with positions repeated to ``length``, as `yoso extend` does; fresh sequences
    of that length with the run's vocabulary and pairs, or ``num_pairs``, and its filler or ``filler``; the run's
    arguments at that length)."""
    args = _run_args(run)
    args = dataclasses.replace(args, max_length=length, mqar_pairs=num_pairs or args.mqar_pairs,
                               mqar_filler=filler or args.mqar_filler)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trained = json.loads((run / "last" / "config.json").read_text())  # its tau and m, not the length rule's
        extend_checkpoint(run / "last", Path(tmp) / "model", length, trained["hash_code_len"], trained["num_hash"])
        model = _load_model(Path(tmp) / "model")
    ids = torch.from_numpy(mqar.generate(mqar_spec(args, num_sequences, seed=99)).astype(np.int64))
    return model, ids, args


def print_length_accuracy(run_dir: str, lengths: list[int], num_hashes: list[int], pairs: list[int],
                          taus: list[int], filler: str | None, num_sequences: int = 64,
                          expectation: bool = False) -> None:  # fmt: skip
    """Query accuracy of a run's last checkpoint, not trained at the new length, on 64 (--sequences) fresh sequences of each
    length, in the run's attention; with --hashes, sampled with each of those numbers of hashes too; with --pairs,
    with each of those numbers of pairs instead of the run's; with --taus, at each of those tau instead of the
    run's (YOSO only); with --expectation, in YOSO-E too (m -> infinity; one sequence at a time)."""
    for length in lengths:
        for num_pairs in pairs or [None]:
            model, ids, args = _at_length(Path(run_dir), length, num_sequences, num_pairs, filler)
            for tau in taus or [None]:
                model.config.hash_code_len = tau or model.config.hash_code_len
                results = [f"{_query_accuracy(model, ids, args):.3f}"]
                for num_hash in num_hashes:
                    model.config.num_hash = num_hash
                    results.append(f"m = {num_hash}: {_query_accuracy(model, ids, args):.3f}")
                if expectation:
                    model.config.use_expectation = True
                    results.append(f"YOSO-E: {_query_accuracy(model, ids, args, chunk=1):.4f}")
                    model.config.use_expectation = False
                at_tau = f", tau {tau}" if tau else ""
                print(f"{Path(run_dir).name} at {length} tokens, {args.mqar_pairs} pairs, {args.mqar_filler} filler"
                      f"{at_tau}: " + ", ".join(results))


def _collisions_at(probs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(Q, heads) entries of (Q, heads, n) ``probs`` at one position per query."""
    return probs.gather(2, positions[:, None, None].expand(-1, probs.shape[1], 1)).squeeze(2)


def print_collision_mass(run_dir: str, lengths: list[int], filler: str | None = None, num_sequences: int = 4) -> None:
    """Per layer and head, mean over the queries of 4 (--sequences) sequences: the collision probability (one hash)
    of each query with its key's position, with that key's value (the next position) and with itself, and the summed
    probability of every other position (distractor mass D: expected colliding distractors a hash; the part on
    the other pairs' values, the confusable ones); with the run's m hashes, the chance that the key and its value
    both collide under none (a miss) and the expected number of distractor collisions (m * D)."""
    for length in lengths:
        model, ids, args = _at_length(Path(run_dir), length, num_sequences, filler=filler)
        first_value = mqar_spec(args).first_value
        batch, query, key = _query_rows(ids, args.mqar_pairs)
        m = model.config.num_hash
        torch.manual_seed(0)  # the earlier layers of a sampled model draw hashes
        with torch.no_grad():
            hidden = model.yoso(input_ids=ids, output_hidden_states=True).hidden_states
        for i, layer in enumerate(model.yoso.encoder.layer):
            attn = layer.attention.self
            with torch.no_grad():
                q, k = (attn._split_heads(f(hidden[i])) for f in (attn.query, attn.key))  # (batch, heads, n, d)
                probs = expectation_matrix(q, k, hash_code_len=model.config.hash_code_len)[batch, :, query]  # (Q, h, n)
            p_key, p_value, p_self = (_collisions_at(probs, pos) for pos in (key, key + 1, query))  # (Q, heads)
            rest = probs.sum(2) - p_key - p_value - p_self
            other_values = (probs * (ids[batch] >= first_value)[:, None, :]).sum(2) - p_value
            miss = ((1 - p_key) * (1 - p_value)) ** m
            for h in range(probs.shape[1]):
                print(f"{Path(run_dir).name} at {length} tokens, tau {model.config.hash_code_len}, layer {i} head {h}: "
                      f"p(key) {p_key[:, h].mean():.3f}, p(value) {p_value[:, h].mean():.3f}, p(self) "
                      f"{p_self[:, h].mean():.3f}, D {rest[:, h].mean():.3f} (other values {other_values[:, h].mean():.3f}), "
                      f"miss with m = {m}: {miss[:, h].mean():.4f}, m*D {m * rest[:, h].mean():.1f}")  # fmt: skip


if __name__ == "__main__":
    filler = "random" if "--random-filler" in sys.argv else None
    expectation = "--expectation" in sys.argv
    sys.argv = [word for word in sys.argv if word not in ("--random-filler", "--expectation")]
    sequences = None
    if "--sequences" in sys.argv:
        at = sys.argv.index("--sequences")
        sequences = int(sys.argv[at + 1])
        del sys.argv[at : at + 2]
    if sys.argv[1] in ("--norms", "--shares"):
        (print_norms if sys.argv[1] == "--norms" else print_shares)(sys.argv[2:])
        sys.exit(0)
    if sys.argv[1] == "--sampling":
        print_sampling_accuracy(sys.argv[2], [int(n) for n in sys.argv[3:]])
        sys.exit(0)
    if sys.argv[1] == "--mass":
        print_collision_mass(sys.argv[2], [int(n) for n in sys.argv[3:]], filler, sequences or 4)
        sys.exit(0)
    if sys.argv[1] == "--lengths":
        lists = {"": [], "--hashes": [], "--pairs": [], "--taus": []}
        current = ""
        for word in sys.argv[3:]:
            current = word if word in lists else current
            lists[current] += [] if word in lists else [int(word)]
        print_length_accuracy(sys.argv[2], lists[""], lists["--hashes"], lists["--pairs"], lists["--taus"], filler,
                              sequences or 64, expectation)  # fmt: skip
        sys.exit(0)
    for name in filter(lambda n: n != "none", sys.argv[1].split(",")):
        VARIANTS[name]()
    sys.exit(main(sys.argv[2:]))
