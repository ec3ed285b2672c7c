"""Plant known bugs, one at a time, in a copy of the package and check that the tests meant to catch each fail.

Not part of the suite (it runs the suite's tests many times). Usage, from the repository root:

    .venv/bin/python benchmarks/plant_bugs.py            # every bug
    .venv/bin/python benchmarks/plant_bugs.py padding    # the bugs whose name contains "padding"

Each bug is a (file, text, replacement) edit of src/yoso_attention and the pytest selection that must fail on
it. The copy is imported through PYTHONPATH, ahead of the installed package; a bug in the compiled kernels' source
rebuilds the copy's libraries with setup.py's flags (g++). Exit status 1 if a bug survives.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUGS = [
    ("padding: token classification keeps labels on padding",
     "models/yoso/modeling_yoso.py", "    if attention_mask is None:\n        return labels\n",
     "    return labels\n", "tests/models/test_padding.py"),
    ("padding: multiple choice drops the attention mask",
     "models/yoso/modeling_yoso.py", "flat(attention_mask), flat(token_type_ids)", "None, flat(token_type_ids)",
     "tests/models/test_padding.py"),
    ("padding: the last row's mask for every row",
     "models/yoso/layers_yoso.py", "head_mask = None if mask is None else mask[:, None, :]",
     "head_mask = None if mask is None else mask[-1:, None, :].expand(mask.shape[0], 1, -1)",
     "tests/models/test_padding.py"),
    ("torchrun: no DistributedDataParallel (no gradient sync)",
     "training/loop.py", "torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)", "model",
     "tests/cli/test_cli.py -k torchrun_equals"),
    ("torchrun: every rank reads the same shard",
     "training/data.py", "return self.collate(batch[rank::world]", "return self.collate(batch[0::world]",
     "tests/cli/test_cli.py -k torchrun_equals"),
    ("sampling: output scaled by 1.03",
     "ops/lsh.py", "return out.reshape(*q.shape[:-1], v.shape[-1]).to(v.dtype)",
     "return (1.03 * out).reshape(*q.shape[:-1], v.shape[-1]).to(v.dtype)", "tests/ops/test_unbiased.py"),
    ("sampling: scale bias in the bucket tables",
     "ops/cumulation.py", "kernels.lsh_cumulation(*arrays, n_buckets, kernel_rows(out).numpy())\n    return out",
     "kernels.lsh_cumulation(*arrays, n_buckets, kernel_rows(out).numpy())\n    return out * 0.97",
     "tests/ops/test_unbiased.py"),
    ("hashing: bits of a code in reverse order",
     "ops/hashing.py", "torch.arange(tau, device=proj.device, dtype=torch.int32))",
     "torch.arange(tau - 1, -1, -1, device=proj.device, dtype=torch.int32))", "tests/ops/test_unbiased.py"),
    ("output_attentions: maps transposed",
     "models/yoso/layers_yoso.py", "        context = normalize_rows(",
     "        weights = None if weights is None else weights.transpose(-1, -2)\n        context = normalize_rows(",
     "tests/models/test_attentions.py"),
    ("parity: the last hidden state dropped",
     "models/yoso/layers_yoso.py", "            if output_hidden_states:\n                all_hidden += (hidden_states,)",
     "            if output_hidden_states and layer is not self.layer[-1]:\n                all_hidden += (hidden_states,)",
     "tests/models/test_parity.py"),
    ("checkpoint: no fallback to .old",
     "training/checkpoint.py", 'for candidate in (path, path.with_name(f"{path.name}.old")):',
     "for candidate in (path,):", "tests/cli/test_kill.py -k listops"),
    ("checkpoint: stale temporary directories kept",
     "training/checkpoint.py", "        shutil.rmtree(stale, ignore_errors=True)\n", "        pass\n",
     "tests/cli/test_kill.py -k listops"),
    ("sampled backward: dq and dk zeroed",
     "ops/lsh.py", "    scale = tau / (2 * num_hash)", "    scale = 0.0 * tau",
     "tests/models/test_behaviour.py -k sampled_query_and_key"),
    ("non-finite input: hidden in the output",
     "ops/nonfinite.py",
     "    return out.add_(per_row(torch.zeros_like(rows, dtype=out.dtype).masked_fill_(rows, float(\"nan\")), out))",
     "    return out",
     "tests/ops/test_nonfinite.py"),
    ("non-finite input: padding multiplied instead of zeroed",
     "ops/layout.py", "        return x.clone().masked_fill_(~keep, 0.0)", "        return x * keep",
     "tests/ops/test_nonfinite.py"),
    ("layout: a head's rows gathered from another head",
     "ops/kernels_numba.py", "            rows[i, l] = x[batch, i, head, l]",
     "            rows[i, l] = x[batch, i, heads - 1 - head, l]", "tests/ops/test_layout.py"),
    ("layout: every head's gradients scattered into head 0",
     "ops/kernels_numba.py", "            x[batch, i, head, l] = rows[i, l]",
     "            x[batch, i, 0, l] = rows[i, l]", "tests/ops/test_layout.py"),
    ("compiled kernels: a head's rows gathered from another head",
     "ops/csrc/cpu_kernels.cpp", "x + ((row_batch * n + i) * heads + head) * width, width * sizeof(float));",
     "x + ((row_batch * n + i) * heads + (heads - 1 - head)) * width, width * sizeof(float));",
     "tests/ops/test_layout.py"),
    ("compiled kernels: crowded buckets skipped in the bucket-major backward",
     "ops/csrc/cpu_kernels.cpp", "bucket_outer_products(qi, nq, kj, nk, r, s.a_mat.data(), s.b_mat.data());\n",
     "if (false) bucket_outer_products(qi, nq, kj, nk, r, s.a_mat.data(), s.b_mat.data());\n",
     "tests/ops/test_lsh.py -k dense_formula"),
    ("compiled kernels: the fast hash's first signs used again in place of the third",
     "ops/csrc/cpu_kernels.cpp", "signed_fwht_rows(buf, d_pad, HASH_BLOCK, cnt, signs + stage * d_pad);",
     "signed_fwht_rows(buf, d_pad, HASH_BLOCK, cnt, signs + (stage == 2 ? 0 : stage) * d_pad);",
     "tests/ops/test_lsh.py -k same_codes"),
    ("compiled kernels: every row hashed with the first row's Gaussian projections",
     "ops/csrc/cpu_kernels.cpp", "draws + (b * d + c) * width", "draws + c * width",
     "tests/ops/test_lsh.py -k same_codes"),
    ("compiled kernels: the odd hash's queries read the keys' scratch row",
     "ops/csrc/cpu_kernels.cpp", "(pair ? i64(qc0[n_q + i]) : query_scratch)", "(pair ? i64(qc0[n_q + i]) : key_scratch)",
     "tests/ops/test_lsh.py -k cumulation_matches"),
    ("compile: a graph break in the attention layer",
     "models/yoso/layers_yoso.py", "        head_mask = None if mask is None else mask[:, None, :]",
     "        torch._dynamo.graph_break()\n        head_mask = None if mask is None else mask[:, None, :]",
     "tests/models/test_compile.py -k fullgraph"),
    ("output_attentions: output not computed from the maps",
     "models/yoso/layers_yoso.py", "            context = (weights @ v.float()).to(v.dtype)",
     "            context = yoso_expectation(q, k, v, head_mask, hash_code_len=cfg.hash_code_len)\n"
     "            weights = weights.detach()", "tests/models/test_attentions.py"),
    ("nonfinite: the eager check trusts every tensor",
     "ops/nonfinite.py", "    return all(bool(torch.isfinite(t.detach().sum())) for t in tensors)", "    return True",
     "tests/ops/test_nonfinite.py"),
    ("nonfinite: the eager check reads only q",
     "ops/nonfinite.py", "for t in tensors)\n", "for t in tensors[:1])\n", "tests/ops/test_nonfinite.py"),
    ("memory: the forward's codes before its output",
     "ops/lsh.py", "    out = new_rows(v, q.shape[-2], v.shape[-1])  # before the codes",
     "    q_codes, k_codes = hash_pair(q, k, hash_draw, num_hash, tau, fast)\n"
     "    out = new_rows(v, q.shape[-2], v.shape[-1])  # before the codes",
     "tests/ops/test_lsh.py -k allocated_before"),
    ("recompute: the generator's state read after the draw",
     "ops/lsh.py", "        state = generator_state(q32.device, generator) if redraw else None\n"
     "        draw = draw_hash_functions(num_rows(q32), q32.shape[-1], *hashing, q32.device, generator)\n",
     "        draw = draw_hash_functions(num_rows(q32), q32.shape[-1], *hashing, q32.device, generator)\n"
     "        state = generator_state(q32.device, generator) if redraw else None\n",
     "tests/ops/test_lsh.py -k recomputed"),
    ("heap: the shim hands torch's requests to glibc's memalign after all",
     "csrc/memalign_shim.c", "    char* raw = __libc_malloc(n + align + 16);",
     "    return __libc_memalign(align, n);\n    char* raw = __libc_malloc(n + align + 16);",
     "tests/cli/test_heap.py"),
    ("heap: the shim's blocks without their check word (freed as glibc chunks)",
     "csrc/memalign_shim.c", "    p[-2] = CHECK ^ p[-1];", "    p[-2] = CHECK;", "tests/cli/test_heap.py"),
    ("heap: yoso train no longer reruns under the shim",
     "cli.py", "        run_under_memalign_shim(sys.argv[1:])", "        pass", "tests/cli/test_heap.py -k command_line"),
    ("heap: the weight gradient's product left out of the matmul buffers' reservation",
     "heap.py", "            torch.mm(g.t(), x, out=_mapped_zeros(d_out, d_in))\n", "", "tests/cli/test_heap.py -k reserved_before_training"),
    ("heap: the training loop reserves the matmul buffers after its first step",
     "training/loop.py", '    if device.type == "cpu":  # before any step', '    if False:  # before any step',
     "tests/cli/test_heap.py -k reserves_matmul"),
]  # fmt: skip


def plant(copy: Path, path: str, old: str, new: str) -> None:
    target = copy / "yoso_attention" / path
    text = target.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{path}: the text to replace occurs {text.count(old)} times, expected once: {old!r}")
    target.write_text(text.replace(old, new))
    if target.suffix in (".cpp", ".c"):
        rebuild(copy, target)


def rebuild(copy: Path, source: Path) -> None:
    """Compile the planted source into each of the copy's libraries built from it, with setup.py's flags."""
    build = runpy.run_path(str(ROOT / "setup.py"), run_name="plant_bugs")  # not __main__: setup() is not called
    for ext in build["kernel_builds"]() + build["memalign_shim"]():
        if Path(ext.sources[0]).name != source.name:
            continue
        package_dir = copy / Path(*ext.name.split(".")[:-1])
        compiler = "g++" if ext.language == "c++" else "gcc"
        for library in package_dir.glob(f"{ext.name.rsplit('.', 1)[1]}.*"):
            subprocess.run([compiler, *ext.extra_compile_args, "-shared", "-fPIC", str(source), "-o", str(library),
                            *ext.extra_link_args], check=True)  # fmt: skip


def main(selection: str = "") -> int:
    survived = []
    for name, path, old, new, tests in BUGS:
        if selection not in name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp)
            shutil.copytree(ROOT / "src" / "yoso_attention", copy / "yoso_attention",
                            ignore=shutil.ignore_patterns("*.pyc"))  # numba caches its kernels there
            plant(copy, path, old, new)
            env = {**os.environ, "PYTHONPATH": f"{copy}{os.pathsep}{ROOT}"}
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                   *tests.split()], cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
        caught = proc.returncode == 1
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]
        print(f"{'caught  ' if caught else 'SURVIVED'} {name}: {last}", flush=True)
        if not caught:
            survived.append(name)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
