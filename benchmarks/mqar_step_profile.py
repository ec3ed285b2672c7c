"""One MQAR-shaped training step (forward and backward), 32 768 tokens at LENGTH tokens a sequence, on random tokens
(or, with --mqar, on MQAR sequences) with a fresh model: ms a step and torch.profiler's table of the ops by self
time. Run alone on the machine.

    .venv/bin/python benchmarks/mqar_step_profile.py LENGTH yoso|softmax|yoso-e [--mqar]
"""

import sys
import time

import torch

from yoso_attention.data import mqar
from yoso_attention.training.args import resolve_args
from yoso_attention.training.data import mqar_spec
from yoso_attention.training.loop import build_model

length, kind = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
flags = {"preset": "mqar", "max_length": length, "attention": kind, "num_hash": 32, "hash": "gaussian",
         "hash_code_len_warmup_steps": 0}  # fmt: skip
args = resolve_args(flags)
model = build_model(args, vocab_size=256, pad_id=0, num_classes=128)
batch = 32768 // length
ids = torch.randint(1, 256, (batch, length))  # (batch, n)
if "--mqar" in sys.argv:
    ids = torch.from_numpy(mqar.generate(mqar_spec(args, batch, seed=1)).astype("int64"))  # (batch, n)
labels = torch.randint(0, 128, (batch, length))  # (batch, n)


def step() -> None:
    model(input_ids=ids, labels=labels).loss.backward()


for _ in range(2):
    step()
start = time.perf_counter()
for _ in range(3):
    step()
print(f"{kind} at {length} tokens: {(time.perf_counter() - start) / 3 * 1000:.0f} ms a step")
with torch.profiler.profile() as prof:
    step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
