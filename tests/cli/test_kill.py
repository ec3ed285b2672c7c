"""A run killed (SIGKILL) at a chosen point of a checkpoint write resumes to the uninterrupted run (up to float32
rounding: see assert_same_curves).

The kill is placed deterministically: the training process runs under a wrapper that kills it from inside the
n-th write of ``last/``, after steps beyond the previous checkpoint were logged. Two places:
- between the two renames (``last`` already moved to ``last.old``, the new one complete in ``last.tmp<pid>``):
  resume must fall back to ``last.old`` and the next write must remove the stale temporary directory;
- inside the temporary directory's write (weights written, trainer state not): ``last`` is still whole.
"""

import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.cli.test_cli import ENV, assert_same_curves, curves, train_args, write, yoso

KILLER = """
import os, signal, sys
import torch
from yoso_attention.cli import main

where, nth = os.environ["KILL_WHERE"], int(os.environ["KILL_AT_WRITE"])
done = 0  # completed writes of last/
real_replace, real_save = os.replace, torch.save

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def replace(src, dst):
    global done
    real_replace(src, dst)
    if str(dst).endswith(os.sep + "last"):
        done += 1
    elif str(dst).endswith(os.sep + "last.old") and where == "between_renames" and done + 1 == nth:
        die()

def save(obj, path, *args, **kwargs):
    in_last = os.path.basename(os.path.dirname(str(path))).startswith("last.tmp")
    if in_last and where == "in_temporary" and done + 1 == nth:
        die()
    return real_save(obj, path, *args, **kwargs)

os.replace, torch.save = replace, save
sys.exit(main(sys.argv[1:]))
"""


def task_args(task, tmp_path):
    if task == "mlm":
        from tests.cli.test_mlm import corpus

        return ["--task", "mlm", "--train-file", str(corpus(tmp_path / "c.txt")), "--max-length", "48"]
    if task == "text":
        rows = "".join(json.dumps({"text": f"{'good' if i % 3 else 'bad'} {i} " * (i % 4 + 1), "label": int(i % 3 > 0)})
                       + "\n" for i in range(60))  # fmt: skip
        return ["--task", "text", "--train-file", str(write(tmp_path / "t.jsonl", rows)), "--max-length", "48"]
    if task == "mqar-tau-schedule":  # killed at step 8, inside the schedule (tau 2 -> 6 over steps 0-12)
        return ["--task", "mqar", "--max-length", "32", "--mqar-pairs", "4", "--mqar-vocab-size", "24",
                "--hash-code-len", "6", "--hash-code-len-start", "2", "--hash-code-len-warmup-steps", "12"]  # fmt: skip
    return []


def killed_run(tmp_path, run_dir, args, where, nth):
    """Run ``yoso args`` until the wrapper kills it in the nth write of last/; returns the exit status."""
    env = {**ENV, "KILL_WHERE": where, "KILL_AT_WRITE": str(nth)}
    proc = subprocess.run([sys.executable, "-c", KILLER, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    return proc.returncode


@pytest.mark.parametrize("task, where", [("listops", "between_renames"), ("listops", "in_temporary"),
                                         ("text", "between_renames"), ("mlm", "between_renames"),
                                         ("mqar-tau-schedule", "between_renames")])  # fmt: skip
def test_kill_inside_a_checkpoint_write_then_resume_matches_an_uninterrupted_run(tmp_path, task, where):
    cache, extra = tmp_path / "cache", task_args(task, tmp_path)
    yoso(*train_args(tmp_path / "full", cache, steps=16, extra=extra), cwd=tmp_path)
    run_dir = tmp_path / "killed"
    # last/ is written at steps 4, 8, 12, 16: kill inside the write at step 8 (the second, where a last.old exists).
    code = killed_run(tmp_path, run_dir, train_args(run_dir, cache, steps=16, extra=extra), where, nth=2)
    assert code == -signal.SIGKILL
    logged = [r["step"] for r in curves(run_dir)]
    assert max(logged) == 8 and logged.count(8) == 2  # steps past the step-4 checkpoint, and the eval at 8, logged
    stale = list(run_dir.glob("last.tmp*"))
    assert len(stale) == 1
    if where == "between_renames":
        assert not (run_dir / "last").exists() and (run_dir / "last.old" / "trainer_state.pt").exists()
    else:
        assert (run_dir / "last" / "trainer_state.pt").exists() and not (stale[0] / "trainer_state.pt").exists()
    yoso(*train_args(run_dir, cache, steps=16, extra=[*extra, "--resume"]), cwd=tmp_path)
    assert_same_curves(curves(run_dir), curves(tmp_path / "full"))
    assert not list(run_dir.glob("last.tmp*")) and not (run_dir / "last.old").exists()
    final = load_file(run_dir / "last" / "model.safetensors")
    reference = load_file(tmp_path / "full" / "last" / "model.safetensors")
    assert final.keys() == reference.keys()
    for key in final:  # equal up to float32 rounding, as the curves
        torch.testing.assert_close(final[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
