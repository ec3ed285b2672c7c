"""Where the MQAR model's training memory goes (docs/studies.md, "Longer sequences"): for each attention, a fresh
process builds the `--preset mqar` model at LENGTH tokens and measures

- resident: the process's RSS after two training steps (for sampled yoso it holds numba and its compiled kernels,
  loaded at the first kernel call; softmax never imports numba), and how much of it is mapped from files,
- step peak: the RSS growth during each of three later training steps (forward, backward, AdamW), with every
  allocation above 64 KB its own mapping from the start, so that freed memory shows (glibc reuses heap memory
  freed before the switch without ever unmapping it: switched after warm-up steps, as in earlier versions of
  this script, RSS overstated the step's peak by 0-50 MB for softmax and 85-180 MB for sampled yoso),
- live peak: the largest sum of live torch tensors during the step (torch.profiler's memory timeline), the
  part that allocator and runtime do not blur.

32 768 tokens a step as in benchmarks/mqar_timing.sh. Memory only, so it may share the machine.
    .venv/bin/python benchmarks/mqar_memory.py [LENGTH ...]        (default: 1024 4096)
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

ATTENTIONS = {  # name: yoso train flags
    "softmax": {"attention": "softmax"},
    "yoso m32 tau8": {"attention": "yoso", "num_hash": 32, "hash_code_len": 8},
    "yoso rule": {"attention": "yoso"},  # tau and m of the length rule, filled in below
    "yoso rule, codes recomputed": {"attention": "yoso", "recompute_hash_codes": True},
}


def file_backed_bytes() -> int:
    """Resident pages mapped from files (shared libraries' code and data): shared between processes and dropped
    by the kernel under memory pressure, unlike the anonymous memory that tensors and heaps take."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup").read().splitlines()[1:])
    return (int(fields["Rss"].split()[0]) - int(fields["Anonymous"].split()[0])) * 1024


def measure(length: int, name: str) -> dict:
    from yoso_attention.bench.timing import exact_rss_mode, live_tensor_peak, peak_bytes, rss_bytes
    from yoso_attention.heap import release_free_heap
    from yoso_attention.models.yoso.convert import hashing_for_length
    from yoso_attention.training.args import resolve_args
    from yoso_attention.training.loop import build_model

    exact_rss_mode()  # before the model's allocations: heap chunks freed before the switch are reused, never unmapped
    flags = {"preset": "mqar", "max_length": length, "hash": "gaussian", "hash_code_len_warmup_steps": 0,
             **ATTENTIONS[name]}  # fmt: skip
    if name.startswith("yoso rule"):
        flags["hash_code_len"], flags["num_hash"] = hashing_for_length(8, 1, 128, length)
    torch.manual_seed(0)
    model = build_model(resolve_args(flags), vocab_size=256, pad_id=0, num_classes=128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = 32768 // length
    ids, labels = torch.randint(1, 256, (batch, length)), torch.randint(0, 128, (batch, length))  # (batch, n)

    def step() -> None:
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):  # the first loads numba's kernels (yoso) and creates AdamW's state
        step()
    release_free_heap()
    resident, file_backed = rss_bytes(), file_backed_bytes()
    live = live_tensor_peak(step)
    hashing = f"tau {model.config.hash_code_len}, m {model.config.num_hash}" if name != "softmax" else ""
    return {"hashing": hashing, "after steps": resident, "file-backed": file_backed,
            "step peak": [peak_bytes(step) for _ in range(3)], "live peak": live}  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(measure(int(sys.argv[2]), sys.argv[3])))
        return
    mb = 2**20
    print("| length (batch) | attention | hashing | resident after 2 steps (MB) | of which file-backed | "
          "RSS growth in a step (MB, 3 steps) | live tensors peak (MB) |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for length in [int(a) for a in sys.argv[1:]] or [1024, 4096]:
        for name in ATTENTIONS:
            out = subprocess.run([sys.executable, __file__, "--one", str(length), name], check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            r = json.loads(out.splitlines()[-1])
            print(f"| {length} ({32768 // length}) | {name} | {r['hashing']} | {r['after steps'] / mb:,.0f} | "
                  f"{r['file-backed'] / mb:,.0f} | "
                  f"{[round(p / mb) for p in r['step peak']]} | {r['live peak'] / mb:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
