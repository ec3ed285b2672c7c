"""Whole-model benchmark: our YosoModel (sampling and YOSO-E) against transformers' YosoModel and a
RoBERTa of the same size with SDPA attention, fp32, batch 1 by default, in one run. Two passes: "eval" (forward
under no_grad) and "train" (forward + backward of last_hidden_state.sum(), the cost of one training step
without the optimizer). Both run with dropout off: with attention dropout, SDPA on CPU leaves its fused
kernel for the quadratic math path, which would flatter YOSO.

"floor" is our model with the token mixing of every attention layer replaced by the identity (each token
gets its own value vector; the q, k, v projections still run): the cost of the dense layers alone, which
no attention can beat. The attention share of a model is (time - floor) / time.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

from ..models.yoso import YosoConfig, YosoModel
from ..models.yoso.layers_yoso import YosoSelfAttention
from .timing import in_fresh_process, median_seconds, peak_bytes

QUADRATIC_YOSO_MAX_N = 4096  # YOSO-E beyond: transformers' needs 12.9 GB per n x n matrix at n = 16384, ours minutes


@dataclass
class ModelResult:
    method: str
    n: int
    pass_: str  # "eval" or "train"
    seconds: float
    peak_mb: float


def base_config(n: int, **overrides) -> dict:
    return dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                max_position_embeddings=max(4096, n), vocab_size=50265, **overrides)  # fmt: skip


@contextlib.contextmanager
def identity_attention():
    """Replace YOSO's token mixing by the identity, keeping every dense layer (the floor)."""
    original = YosoSelfAttention.forward

    def forward(self, hidden_states, mask=None, output_attentions=False):
        q, k = self.query(hidden_states), self.key(hidden_states)  # dense work that attention's inputs cost
        return self.value(hidden_states) + 0.0 * (q + k), None  # q, k stay in the graph: their backward too

    YosoSelfAttention.forward = forward
    try:
        yield
    finally:
        YosoSelfAttention.forward = original


def _builders(n: int, num_hash: int, tau: int, pass_: str):
    import transformers

    ours = dict(hash_code_len=tau, num_hash=num_hash)

    def sampling(**overrides):
        return YosoModel(YosoConfig(**base_config(n, use_expectation=False, **ours, **overrides)))

    builders = {"yoso (ours, sampling)": (sampling, contextlib.nullcontext)}
    if pass_ == "train":  # the training-memory option: hash functions kept for backward instead of codes
        builders["yoso (ours, recomputed codes)"] = (lambda: sampling(recompute_hash_codes=True),
                                                     contextlib.nullcontext)
    builders |= {
        "floor (attention = identity)": (lambda: YosoModel(YosoConfig(**base_config(n))), identity_attention),
        "roberta (sdpa)": (lambda: transformers.RobertaModel(transformers.RobertaConfig(
            **base_config(n + 2), attn_implementation="sdpa")), contextlib.nullcontext),
    }  # fmt: skip
    if n <= QUADRATIC_YOSO_MAX_N:
        builders["yoso-e (ours)"] = (lambda: YosoModel(YosoConfig(**base_config(n, **ours))), contextlib.nullcontext)
        if pass_ == "eval":  # its training step keeps n x n matrices per layer: tens of GB at n = 4096
            builders["transformers yoso-e"] = (
                lambda: transformers.YosoModel(transformers.YosoConfig(**base_config(n))),
                contextlib.nullcontext,
            )
    return builders


def _step(model, ids, pass_: str):
    """One call of the pass: a no_grad forward (eval) or forward + backward (train)."""
    if pass_ == "eval":
        with torch.no_grad():
            return model(ids)
    model.zero_grad(set_to_none=True)
    model(ids).last_hidden_state.sum().backward()


def _plan(lengths, num_hash: int, tau: int, methods: list[str] | None, passes, batch: int) -> list[tuple]:
    """(method, n, pass, ids, build, context) for every row, on ids seeded by n: the same in every process."""
    plan = []
    for pass_ in passes:
        for n in lengths:
            ids = torch.randint(3, 50265, (batch, n), generator=torch.Generator().manual_seed(n))
            plan += [(name, n, pass_, ids, build, context)
                     for name, (build, context) in _builders(n, num_hash, tau, pass_).items()
                     if not methods or name in methods]  # fmt: skip
    return plan


def _peaks_mb(*settings) -> list[float]:
    """Each row's peak RSS growth (MB) in the steady state; run in a fresh process (in_fresh_process)."""
    peaks = []
    for _, _, pass_, ids, build, context in _plan(*settings):
        model = build().eval()
        with context():
            _step(model, ids, pass_)  # first-call costs (gradient buffers, kernel loading) apart
            peaks.append(peak_bytes(lambda m=model: _step(m, ids, pass_)) / 2**20)
        del model
    return peaks


def run_model_benchmark(lengths=(512, 4096), num_hash: int = 64, tau: int = 9, repeats: int = 1,
                        methods: list[str] | None = None, passes=("eval",), batch: int = 1,
                        progress=print) -> list[ModelResult]:  # fmt: skip
    """Times every row here, then measures its peak memory in a fresh process (see timing.py)."""
    settings = (tuple(lengths), num_hash, tau, methods, tuple(passes), batch)
    results = []
    for name, n, pass_, ids, build, context in _plan(*settings):
        model = build().eval()
        with context():
            sec = median_seconds(lambda m=model: _step(m, ids, pass_), repeats=repeats, warmup=1)
        del model
        results.append(ModelResult(name, n, pass_, sec, float("nan")))
        progress(f"n={n:6d} {pass_:5s} {name:30s} {sec:8.2f} s")
    for result, peak in zip(results, in_fresh_process(_peaks_mb, *settings), strict=True):
        result.peak_mb = peak
        progress(f"n={result.n:6d} {result.pass_:5s} {result.method:30s} peak {peak:8.0f} MB")
    return results


def model_table(results: list[ModelResult]) -> str:
    by_key = {(r.method, r.n, r.pass_): r for r in results}
    lines = ["| n | pass | model | time (s) | peak (MB) | ours (sampling) is faster by | attention share |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        ours = by_key.get(("yoso (ours, sampling)", r.n, r.pass_))
        floor = by_key.get(("floor (attention = identity)", r.n, r.pass_))
        speedup = f"{r.seconds / ours.seconds:.2f}x" if ours else "-"
        share = f"{max(0.0, (r.seconds - floor.seconds) / r.seconds):.0%}" if floor and r is not floor else "-"
        lines.append(f"| {r.n} | {r.pass_} | {r.method} | {r.seconds:.2f} | {r.peak_mb:.0f} | {speedup} | {share} |")
    return "\n".join(lines)


def as_records(results: list[ModelResult]) -> list[dict]:
    return [asdict(r) for r in results]
