"""Diagnostic variants of the attention for the MQAR study (docs/studies.md, "Why YOSO stays at chance"): runs
`yoso train` with one variant patched in. Not library code; each variant isolates one difference between YOSO and
softmax attention.

    .venv/bin/python benchmarks/mqar_diagnosis.py VARIANT train --task mqar ... --attention yoso-e|softmax

    .venv/bin/python benchmarks/mqar_diagnosis.py --norms RUN_DIR ...     # mean |q|, |k| per layer: init vs trained

VARIANT (comma-separated, or "none"):
  nonorm    YOSO: no per-head L2 normalisation of the attention output
  rownorm   YOSO-E: divide each output row by its total weight (as softmax does) instead of L2-normalising it
  smnorm    softmax: L2-normalise each head's output, as YOSO does
  smunit    softmax on unit q and k with a fixed scale (env SCALE, default 5): bounded sharpness, as YOSO's
            (1 - theta/pi)^tau has (log-contrast tau ln 2 between an aligned and an orthogonal key)
  tausched  YOSO: tau grows linearly from env TAU0 (default 2) to --hash-code-len over the first FRAC (0.5) of
            the steps
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from yoso_attention.cli import main
from yoso_attention.models.yoso import layers_yoso
from yoso_attention.training import loop, softmax


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


def tau_schedule():
    set_step = loop.set_attention_for_step
    tau0, frac = int(os.environ.get("TAU0", "2")), float(os.environ.get("FRAC", "0.5"))

    def scheduled(model, args, step):
        set_step(model, args, step)
        end = max(1, int(frac * args.max_steps))
        model.config.hash_code_len = round(tau0 + (args.hash_code_len - tau0) * min(1.0, step / end))

    loop.set_attention_for_step = scheduled


VARIANTS = {
    "nonorm": no_output_norm,
    "rownorm": row_sum_norm,
    "smnorm": lambda: softmax_forward(unit_qk=False, scale=None, normalise_output=True),
    "smunit": lambda: softmax_forward(unit_qk=True, scale=float(os.environ.get("SCALE", "5")), normalise_output=False),
    "tausched": tau_schedule,
}

def print_norms(run_dirs: list[str]) -> None:
    """Mean |q| and |k| per layer on 32 eval sequences, for a fresh model (seed 0) and the run's last checkpoint."""
    import json
    from pathlib import Path

    from yoso_attention import YosoForTokenClassification
    from yoso_attention.training.args import TrainArgs
    from yoso_attention.training.data import load_splits

    for run in map(Path, run_dirs):
        trained = YosoForTokenClassification.from_pretrained(run / "last").eval()
        torch.manual_seed(0)
        fresh = YosoForTokenClassification(trained.config).eval()
        splits = load_splits(TrainArgs(**json.loads((run / "args.json").read_text())))[0]
        ids, _, _ = splits["eval"].collate(list(range(32)))
        for label, model in (("init", fresh), ("trained", trained)):
            with torch.no_grad():
                hidden = model.yoso(input_ids=ids, output_hidden_states=True).hidden_states
                norms = []
                for i, layer in enumerate(model.yoso.encoder.layer):
                    attn = layer.attention.self
                    q, k = (attn._split_heads(f(hidden[i])).norm(dim=-1).mean() for f in (attn.query, attn.key))
                    norms.append(f"layer {i}: |q| {q:.2f} |k| {k:.2f}")
            print(f"{run.name} {label}: " + "; ".join(norms))


if __name__ == "__main__":
    if sys.argv[1] == "--norms":
        print_norms(sys.argv[2:])
        sys.exit(0)
    for name in filter(lambda n: n != "none", sys.argv[1].split(",")):
        VARIANTS[name]()
    sys.exit(main(sys.argv[2:]))
