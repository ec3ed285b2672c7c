"""The memalign shim that `yoso train` runs under (yoso_attention/heap.py, csrc/memalign_shim.c): what it is for
(a freed aligned block takes the next request of its size), the allocator contract it keeps, and when the command
uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from yoso_attention import heap

pytestmark = pytest.mark.skipif(heap.libc() is None, reason="the shim is for glibc")

LIBC = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
for name, res, args in [("malloc", ctypes.c_void_p, [ctypes.c_size_t]), ("free", None, [ctypes.c_void_p]),
                        ("realloc", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
                        ("aligned_alloc", ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_size_t]),
                        ("memalign", ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_size_t]),
                        ("malloc_usable_size", ctypes.c_size_t, [ctypes.c_void_p]),
                        ("posix_memalign", ctypes.c_int, [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                                          ctypes.c_size_t])]:
    getattr(libc, name).restype, getattr(libc, name).argtypes = res, args

def posix_memalign(align, n):
    p = ctypes.c_void_p()
    status = libc.posix_memalign(ctypes.byref(p), align, n)
    return status, p.value
"""


def run_python(code: str, shim: bool = True, with_libc: bool = False) -> str:
    """The output of the (indented) code in a fresh interpreter, under the shim or not; with_libc: after LIBC."""
    code = (LIBC if with_libc else "") + textwrap.dedent(code)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if shim:
        env["LD_PRELOAD"] = str(heap.memalign_shim_path())
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_the_shim_is_built_where_the_command_uses_it():
    assert heap.memalign_shim_path() is not None  # Linux with a C compiler at install, as wherever this suite runs


def test_under_the_shim_a_freed_aligned_block_takes_the_next_request_of_its_size():
    """torch asks posix_memalign(64, n) for every CPU tensor. glibc's memalign (2.36) caches the slivers it cuts off
    such a block, so the block's hole is a few bytes short of the next request of the same size and the heap grows
    (the same program without the shim gets a new address there); under the shim the hole is reused."""
    code = """
    n = 8 << 20
    libc.free(posix_memalign(64, n)[1])  # mapped on its own; its free raises glibc's mapping threshold above n
    a = posix_memalign(64, n)[1]
    pins = [libc.malloc(100), posix_memalign(64, n)[1], libc.malloc(100)]  # live neighbours: no merging into the top
    libc.free(a)
    b = posix_memalign(64, n)[1]
    print(a % 64 == 0 and b % 64 == 0, b == a)
    """
    assert run_python(code, with_libc=True) == "True True"


def test_the_shim_keeps_the_allocator_contract():
    code = """
    import json
    out = {}
    out["aligned"] = all(posix_memalign(a, n)[1] % a == 0 for a in (8, 16, 32, 64, 128, 4096) for n in (0, 1, 100, 1 << 20))
    out["einval"] = [posix_memalign(a, 100)[0] for a in (0, 3, 24)]
    out["enomem"] = posix_memalign(64, 2**64 - 8)[0]
    out["other_entry_points"] = libc.aligned_alloc(64, 128) % 64 == 0 and libc.memalign(32, 100) % 32 == 0
    status, p = posix_memalign(64, 1000)
    ctypes.memset(p, 7, 1000)
    out["usable"] = libc.malloc_usable_size(p) >= 1000
    q = libc.realloc(p, 100000)  # contents kept, the old block freed
    out["realloc"] = ctypes.string_at(q, 1000) == bytes([7]) * 1000
    libc.free(q)
    libc.free(None)
    plain = libc.malloc(64)
    libc.free(plain)
    print(json.dumps(out))
    """
    out = json.loads(run_python(code, with_libc=True))
    errno_values = [22, 22, 22]  # EINVAL: not a power of two times sizeof(void *)
    assert out == {"aligned": True, "einval": errno_values, "enomem": 12, "other_entry_points": True, "usable": True,
                   "realloc": True}  # fmt: skip


def test_torch_and_the_ops_compute_the_same_under_the_shim():
    code = """
    import hashlib, torch
    from yoso_attention import yoso_lsh
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 257, 16, generator=g, requires_grad=True) for _ in range(3))
    out = yoso_lsh(q, k, v, num_hash=8, hash_code_len=6, generator=torch.Generator().manual_seed(1))
    out.backward(torch.ones_like(out))
    tensors = [out, q.grad, k.grad, v.grad, torch.randn(1000, 1000, generator=g) @ torch.randn(1000, 1000, generator=g)]
    print(all(t.data_ptr() % 64 == 0 for t in tensors),
          hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in tensors)).hexdigest())
    """
    with_shim, without = run_python(code), run_python(code, shim=False)
    assert with_shim.startswith("True ") and with_shim == without


def test_the_shim_applies_unless_turned_off_or_another_library_is_preloaded(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv(heap.SHIM_ENV, raising=False)
    command, env = heap.shim_command(["train", "--max-steps", "3"])
    assert command == [sys.executable, "-m", "yoso_attention.cli", "train", "--max-steps", "3"]
    assert env["LD_PRELOAD"] == str(heap.memalign_shim_path())
    assert heap.memalign_shim_status() == "yoso train preloads it"
    monkeypatch.setenv(heap.SHIM_ENV, "0")
    assert heap.shim_command(["train"]) is None
    monkeypatch.delenv(heap.SHIM_ENV)
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")  # the shim frees through glibc: never on top of another
    assert heap.shim_command(["train"]) is None and heap.memalign_shim_status().startswith("off")
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setattr(sys, "executable", "")  # an embedded interpreter: nothing to rerun
    assert heap.shim_command(["train"]) is None


def test_the_shim_counts_as_preloaded_only_where_it_is_mapped(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", str(heap.memalign_shim_path()))  # named, but this process did not load it
    assert heap.memalign_shim_preloaded() is False
    assert run_python("from yoso_attention import heap; print(heap.memalign_shim_preloaded())") == "True"


@pytest.mark.slow
def test_yoso_train_from_the_command_line_runs_under_the_shim(tmp_path):
    """`yoso train` (sys.argv, not a list from Python) reruns itself under the shim; summary.json says which heap
    its peak memory was measured on."""
    flags = ["train", "--task", "mqar", "--max-length", "32", "--mqar-pairs", "4", "--mqar-vocab-size", "64",
             "--train-examples", "64", "--eval-examples", "16", "--test-examples", "16", "--hidden-size", "16",
             "--num-layers", "1", "--num-heads", "2", "--batch-size", "8", "--max-steps", "2", "--eval-every", "2",
             "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    for setting, expected in (("1", True), ("0", False)):
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {heap.SHIM_ENV: setting}
        out = tmp_path / f"run-{setting}"
        done = subprocess.run([sys.executable, "-m", "yoso_attention.cli", *flags, "--output-dir", str(out)], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((out / "summary.json").read_text())["memalign_shim"] is expected


MATMULS = """
import ctypes, torch
from yoso_attention import heap

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

mallinfo2 = heap.libc().mallinfo2
mallinfo2.restype = Info

def allocated():
    info = mallinfo2()
    return info.uordblks + info.hblkhd

def kept_by_a_step(shapes, rows):
    # bytes that still stand allocated after a training step's three products per weight, their results freed
    tensors = [(torch.randn(rows, d_in), torch.randn(rows, d_out), torch.randn(d_out, d_in), torch.randn(d_out))
               for d_out, d_in in shapes]
    before = allocated()
    for x, g, w, b in tensors:
        torch.nn.functional.linear(x, w, b).sum(); (g @ w).sum(); (g.t() @ x).sum()
    return allocated() - before
"""


def test_matmul_buffers_reserved_before_training_leave_a_step_nothing_to_keep():
    """torch's x86 builds multiply through MKL, which keeps per-thread buffers made at the first product of each kind;
    the training loop reserves them first (heap.reserve_matmul_buffers). Reserved, a step's products (forward,
    input gradient, weight gradient of each weight) keep nothing; unreserved, where MKL multiplies, they keep MBs.
    Fresh interpreters: the buffers live as long as the process."""
    shapes = "[(128, 64), (64, 128), (127, 64)]"
    reserved = run_python(MATMULS + f"heap.reserve_matmul_buffers({shapes}, 4096)\n"
                          f"print(kept_by_a_step({shapes}, 4096))", shim=False)  # fmt: skip
    assert int(reserved) < 2**20
    unreserved = run_python(MATMULS + f"print(torch.backends.mkl.is_available(), kept_by_a_step({shapes}, 4096))",
                            shim=False)  # fmt: skip
    mkl, kept = unreserved.split()
    assert mkl == "False" or int(kept) > 4 * 2**20


def test_the_training_loop_reserves_matmul_buffers_for_the_models_weights_before_its_first_step(tmp_path, monkeypatch):
    import torch

    from yoso_attention.cli import main
    from yoso_attention.training import loop

    calls = []
    monkeypatch.setattr(loop, "reserve_matmul_buffers", lambda shapes, rows: calls.append((set(shapes), rows)))
    forward = loop.YosoForTokenClassification.forward
    monkeypatch.setattr(loop.YosoForTokenClassification, "forward",
                        lambda model, **k: calls.append(model) or forward(model, **k))  # fmt: skip
    main(["train", "--task", "mqar", "--max-length", "32", "--mqar-pairs", "4", "--mqar-vocab-size", "64",
          "--train-examples", "16", "--eval-examples", "8", "--test-examples", "8", "--hidden-size", "16",
          "--intermediate-size", "24", "--num-layers", "1", "--num-heads", "2", "--batch-size", "4", "--max-steps", "1",
          "--eval-every", "1", "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "run")])  # fmt: skip
    (shapes, rows), model = calls[:2]  # reserved, then the first step's forward
    linears = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert shapes == linears and {(16, 16), (24, 16), (16, 24)} < linears and rows == 4 * 32
