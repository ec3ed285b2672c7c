"""End-to-end runs of the ``yoso`` command in subprocesses with tiny settings."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from yoso_attention.cli import main

TINY = ["--train-examples", "96", "--eval-examples", "32", "--test-examples", "32", "--max-length", "64",
        "--min-length", "4", "--max-depth", "3", "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2",
        "--intermediate-size", "32", "--batch-size", "8", "--warmup-steps", "2", "--num-hash", "4"]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(cmd, cwd, input=None, timeout=600):
    """Run in a new session; on timeout kill the whole group (torchrun's workers included)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s\n{err[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def yoso(*args, cwd, check=True, input=None):
    proc = run([sys.executable, "-m", "yoso_attention.cli", *args], cwd, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def train_args(out, cache, steps=12, extra=()):
    return ["train", *TINY, "--output-dir", str(out), "--cache-dir", str(cache), "--max-steps", str(steps),
            "--eval-every", "4", "--save-every", "4", *extra]  # fmt: skip


def curves(run: Path) -> list[dict]:
    keep = ("step", "split", "loss", "accuracy")
    return [{k: r[k] for k in keep if k in r} for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def assert_same_curves(got: list[dict], want: list[dict]) -> None:
    """The same records (steps, splits, fields), losses and accuracies equal up to float32 rounding.

    Bit equality across processes is more than the CPU BLAS promises (MKL sums reproduce run to run only in its CNR
    mode; a CI run saw one-ulp loss differences after a resume). Resuming without the optimizer, schedule or RNG state
    moved a loss of tests/cli/test_kill.py by 3e-5 (relative) at least, ten times this tolerance.
    """
    assert [(r["step"], r["split"], sorted(r)) for r in got] == [(r["step"], r["split"], sorted(r)) for r in want]
    for mine, theirs in zip(got, want):
        for field in ("loss", "accuracy"):
            if field in theirs:
                assert mine[field] == pytest.approx(theirs[field], rel=3e-6, abs=1e-7), (mine, theirs)


def recount(args: list[str], model_dir: Path) -> tuple[float, dict]:
    """(test accuracy of the saved model, {split: majority-class rate}), counted here one example at a time from the
    run's own data: an evaluation independent of the training loop's batched ``evaluate``."""
    from collections import Counter

    from yoso_attention.cli import _explicit_train_args, build_parser
    from yoso_attention.predict import _load_model
    from yoso_attention.training.args import resolve_args
    from yoso_attention.training.data import load_splits

    splits = load_splits(resolve_args(_explicit_train_args(build_parser().parse_args(args))))[0]
    model, _ = _load_model(model_dir)
    with torch.no_grad():
        right = sum(int(model(input_ids=torch.tensor([ids])).logits.argmax()) == label
                    for ids, label in splits["test"].examples)  # fmt: skip
    majority = {}
    for name in ("eval", "test"):
        labels = Counter(label for _, label in splits[name].examples)
        majority[name] = max(labels.values()) / sum(labels.values())
    return right / len(splits["test"]), majority


@pytest.mark.parametrize("attention", ["yoso", "yoso-e", "softmax"])
def test_train_writes_metrics_plot_checkpoints_and_predicts(attention, tmp_path):
    run_dir = tmp_path / "run_dir"
    args = train_args(run_dir, tmp_path / "cache", steps=8, extra=["--attention", attention])
    yoso(*args, cwd=tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["tokens_per_second"] > 0
    accuracy, baselines = recount(args, run_dir / "last")
    if attention == "yoso":  # the test run samples other hash functions than this one
        assert (summary["test_accuracy"] * 32) % 1 == 0  # a count of the 32 test examples
    else:
        assert summary["test_accuracy"] == accuracy
    assert summary["majority_baseline"] == baselines["test"]
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert (run_dir / "last" / "model.safetensors").exists() and (run_dir / "best" / "config.json").exists()
    assert [r["step"] for r in curves(run_dir) if r["split"] == "eval"] == [4, 8]
    out = yoso("predict", str(run_dir / "last"), cwd=tmp_path, input="[MAX 1 [MIN 2 3 ] ]\n[SM 4 5 ]\n")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 2 and len(lines[0]["predictions"]) == 3


def torchrun(tmp_path, run_dir, args, nproc=2):
    """``yoso`` under torchrun with nproc CPU processes (gloo); fails the test with the workers' stderr."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "yoso_attention.cli", *args]  # fmt: skip
    # Output to files, not pipes: the workers inherit them, and a pipe left unread would block them.
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        env = {**ENV, "PYTHONFAULTHANDLER": "1"}
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            returncode = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            # SIGABRT first: with PYTHONFAULTHANDLER every process prints where it hangs into err.txt.
            subprocess.run(["pkill", "-ABRT", "-f", str(run_dir)])
            time.sleep(3)
            os.killpg(proc.pid, signal.SIGKILL)
            subprocess.run(["pkill", "-9", "-f", str(run_dir)])  # the workers run in sessions of their own
            raise AssertionError("torchrun timed out:\n" + (tmp_path / "err.txt").read_text()[-8000:]) from None
    assert returncode == 0, (tmp_path / "err.txt").read_text()[-4000:]
    return (tmp_path / "out.txt").read_text()


def test_torchrun_mlm_two_processes_on_cpu(tmp_path):
    from tests.cli.test_mlm import corpus

    run_dir = tmp_path / "ddp"
    mlm = ["--task", "mlm", "--train-file", str(corpus(tmp_path / "c.txt")), "--max-length", "48"]
    out = torchrun(tmp_path, run_dir, train_args(run_dir, tmp_path / "cache", steps=6, extra=mlm))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert len([r for r in curves(run_dir) if r["split"] == "train"]) == 6  # rank 0 only writes
    assert out.count('"world_size": 2') == 1  # one summary, from rank 0


def test_torchrun_equals_one_process_on_the_same_global_batch_and_resumes(tmp_path):
    # Deterministic settings (YOSO-E, no dropout) so that only the split of each batch over processes differs;
    # a constant lr so that a run stopped at step 3 and resumed to 6 is the 6-step run.
    cache, common = tmp_path / "cache", ["--attention", "yoso-e", "--dropout", "0", "--lr-schedule", "constant"]
    single = tmp_path / "single"
    yoso(*train_args(single, cache, steps=6, extra=[*common, "--batch-size", "8"]), cwd=tmp_path)
    ddp = tmp_path / "ddp"
    half = [*common, "--batch-size", "4"]  # per process: the same 8 sequences a step
    torchrun(tmp_path, ddp, train_args(ddp, cache, steps=3, extra=half))
    torchrun(tmp_path, ddp, train_args(ddp, cache, steps=6, extra=[*half, "--resume"]))
    want = curves(single)
    got = [r for r in curves(ddp) if r["split"] == "train" or r["step"] != 3]  # the 3-step run's last evaluation
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
    for g, w in zip(got, want, strict=True):
        assert abs(g["loss"] - w["loss"]) < 1e-5 and g.get("accuracy") == w.get("accuracy"), (g, w)
    ours, theirs = load_file(ddp / "last" / "model.safetensors"), load_file(single / "last" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=1e-5, rtol=1e-4), name
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2


def test_bench_writes_table_json_and_plot(tmp_path):
    out = yoso("bench", "--lengths", "64", "127", "--repeats", "1", "--num-hash", "4", "--heads", "3", "--head-dim",
               "16", "--hash-code-len", "5", "--output-dir", str(tmp_path / "b"), cwd=tmp_path)  # fmt: skip
    assert "vs SDPA" in out.stdout
    records = json.loads((tmp_path / "b" / "ops.json").read_text())
    assert {r["method"] for r in records} == {"sdpa", "dense_yoso_e", "yoso_e", "yoso_lsh", "yoso_lsh_model_layout",
                                              "yoso_lsh_torch_path"}  # fmt: skip
    assert (tmp_path / "b" / "ops.png").stat().st_size > 1000


def test_bench_torch_path_rows_run_forward_and_backward_on_the_torch_path(monkeypatch):
    from yoso_attention.bench.ops import _calls
    from yoso_attention.ops import kernels_torch

    ran = []
    for name in ("cumulate", "weighted_backward"):
        original = getattr(kernels_torch, name)
        monkeypatch.setattr(kernels_torch, name, lambda *a, f=original, n=name: ran.append(n) or f(*a))
    for method, _, pass_name, call in _calls((50,), 2, 8, 4, 5, True, progress=lambda _: None):
        ran.clear()
        with torch.set_grad_enabled(pass_name != "fwd"):
            call()
        on_torch_path = {"fwd": ["cumulate"], "fwd+bwd": ["cumulate", "cumulate", "weighted_backward"]}[pass_name]
        assert ran == (on_torch_path if method == "yoso_lsh_torch_path" else []), (method, pass_name)


def test_bench_measures_memory_in_a_fresh_process():
    from yoso_attention.bench.ops import run_op_benchmark
    from yoso_attention.bench.timing import in_fresh_process

    assert in_fresh_process(os.getpid) != os.getpid()
    heads, n, d = 2, 1024, 32
    results = run_op_benchmark((n,), heads=heads, d=d, num_hash=4, tau=6, repeats=1, progress=lambda _: None)
    output_mb = heads * n * d * 4 / 2**20  # 0.25 MB: above the 64 KB from which each allocation is mapped
    for r in results:
        assert 0 <= r.peak_mb < float("inf"), (r.method, r.pass_, r.peak_mb)  # measured (NaN until then)
        if r.pass_ == "fwd":  # at least its output, however short the call (the sampler reads every millisecond)
            assert r.peak_mb >= output_mb, (r.method, r.peak_mb)


@pytest.mark.parametrize("flag", ["--repeats", "--heads", "--lengths"])
def test_bench_rejects_sizes_below_one(capsys, flag):
    with pytest.raises(SystemExit):
        main(["bench", flag, "0"])
    assert f"argument {flag}: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_info_lists_versions_and_fast_paths(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "torch" in text and "fast_path_cpu" in text


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_text_task_from_jsonl_and_csv(tmp_path):
    rows = "".join(json.dumps({"text": f"sample {i} " * (i % 5 + 1), "label": i % 2}) + "\n" for i in range(40))
    data = write(tmp_path / "train.jsonl", rows)
    csv = write(tmp_path / "eval.csv", "text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(10)))
    args = ["train", "--task", "text", "--train-file", str(data), "--eval-file", str(csv), "--max-steps", "3",
            "--eval-every", "3", "--save-every", "3", "--batch-size", "4", "--hidden-size", "32", "--num-layers", "1",
            "--max-length", "64", "--output-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 0


@pytest.mark.parametrize("content,suffix,message", [
    ('{"text": "a", "label": 0}\n{"text": "b", "label": 1\n', ".jsonl", "train.jsonl:2: malformed JSON"),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": 7}\n', ".jsonl", "train.jsonl:2: label 7 is outside the 2 classes"),
    ("text,label\nhello,0\nworld,x\n", ".csv", "train.csv:3: label 'x' is a class name but other labels are"),
    ("text,label\nhello,0\nworld,1.5\n", ".csv", "train.csv:3: label '1.5' is neither an integer class id"),
    ("words,label\nhello,0\n", ".csv", "has no column 'text'"),
    ("text,label\n", ".csv", "train.csv: no rows"),
    ("", ".jsonl", "train.jsonl: no rows"),
    ("text\tlabel\nhello\t0\n", ".tsv", "must end in .csv or .jsonl, got '.tsv'"),
])  # fmt: skip
def test_malformed_data_reports_the_line(tmp_path, capsys, content, suffix, message):
    data = write(tmp_path / f"train{suffix}", content)
    assert main(["train", "--task", "text", "--train-file", str(data), "--output-dir", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_bad_arguments_and_missing_files(tmp_path, capsys):
    assert main(["train", "--task", "text", "--train-file", str(tmp_path / "nope.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--task", "mnist"])
    assert "invalid choice: 'mnist'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--attention", "linformer"])
    assert main(["predict", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_resume_without_or_with_corrupt_checkpoint_fails_cleanly(tmp_path, capsys):
    run_dir = tmp_path / "run_dir"
    base = ["train", *TINY, "--output-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache"), "--resume"]
    assert main(base) == 2
    assert "no checkpoint" in capsys.readouterr().err
    (run_dir / "last").mkdir(parents=True)
    state = write(run_dir / "last" / "trainer_state.pt", "garbage")
    metrics = write(run_dir / "metrics.jsonl", '{"step": 1, "split": "train", "loss": 1.0}\n')
    assert main(base) == 2
    assert "corrupt" in capsys.readouterr().err
    assert state.read_text() == "garbage" and metrics.read_text().startswith('{"step": 1')


def test_without_the_cli_extra_training_finishes_and_plot_says_what_to_install(tmp_path):
    """matplotlib comes with the `cli` extra; without it training skips its plot with a notice."""
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None  # as if not installed\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(blocker), ENV.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "yoso_attention.cli", *train_args(tmp_path / "run", tmp_path / "cache", steps=4)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "matplotlib is not installed" in proc.stderr and "yoso-attention[cli]" in proc.stderr
    assert (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "curves.png").exists()
    plot = subprocess.run([sys.executable, "-m", "yoso_attention.cli", "plot", str(tmp_path / "run")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert plot.returncode == 2 and "pip install 'yoso-attention[cli]'" in plot.stderr


def test_plot_overlays_runs_labelled_by_attention_and_seed(tmp_path):
    for attention in ("yoso", "softmax"):
        args = train_args(tmp_path / attention, tmp_path / "cache", steps=4, extra=["--attention", attention])
        yoso(*args, cwd=tmp_path)
    from yoso_attention.training.plot import run_label, run_styles

    assert run_label(tmp_path / "softmax") == "softmax, seed 0"
    runs = [tmp_path / "yoso", tmp_path / "softmax", tmp_path / "yoso"]  # same attention: same color, new style
    (yoso_1, softmax_0, yoso_2) = run_styles(runs, ["C0", "C1"])
    assert yoso_1[0] == yoso_2[0] != softmax_0[0] and yoso_1[1] != yoso_2[1]
    assert main(["plot", str(tmp_path / "yoso"), str(tmp_path / "softmax"), "--output", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    evals = [r for r in map(json.loads, (tmp_path / "yoso" / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "eval"]  # fmt: skip
    majority = recount(args, tmp_path / "softmax" / "last")[1]["eval"]
    assert evals and all(r["majority"] == majority and r["first_operator"] > majority for r in evals)


def test_text_labels_given_as_names_read_as_names(tmp_path):
    rows = "".join(json.dumps({"text": f"{'good' if i % 2 else 'bad'} film {i}", "label": "pos" if i % 2 else "neg"})
                   + "\n" for i in range(24))  # fmt: skip
    data = write(tmp_path / "train.jsonl", rows)
    args = ["train", "--task", "text", "--train-file", str(data), "--max-steps", "2", "--eval-every", "2",
            "--save-every", "2", "--batch-size", "4", "--hidden-size", "32", "--num-layers", "1", "--max-length", "32",
            "--output-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 0
    config = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    out = yoso("predict", str(tmp_path / "run" / "last"), cwd=tmp_path, input="good film\n")
    assert {p["label"] for p in json.loads(out.stdout)["predictions"]} == {"neg", "pos"}
    assert main([*args, "--label-names", "pos", "neg", "--output-dir", str(tmp_path / "named")]) == 0
    named = json.loads((tmp_path / "named" / "last" / "config.json").read_text())
    assert named["id2label"] == {"0": "pos", "1": "neg"}


def test_listops_classes_are_the_digits(tmp_path):
    yoso(*train_args(tmp_path / "run", tmp_path / "cache", steps=2), cwd=tmp_path)
    config = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert config["id2label"] == {str(i): str(i) for i in range(10)}


def test_expectation_warmup_trains_with_yoso_e_then_samples_and_resumes_in_either_mode(tmp_path, monkeypatch):
    from yoso_attention.models.yoso import layers_yoso

    calls, interrupt_at = [], [2]  # the 2nd training call: inside step 2, the warm-up's last step
    for name, kind in (("yoso_expectation", "yoso-e"), ("yoso_lsh", "yoso")):

        def spy(*args, _op=getattr(layers_yoso, name), _kind=kind, **kwargs):
            calls.append((_kind, torch.is_grad_enabled()))
            if sum(training for _, training in calls) in interrupt_at and torch.is_grad_enabled():
                interrupt_at.clear()
                raise KeyboardInterrupt
            return _op(*args, **kwargs)

        monkeypatch.setattr(layers_yoso, name, spy)
    run_dir = tmp_path / "run"
    args = train_args(run_dir, tmp_path / "cache", steps=4, extra=["--num-layers", "1", "--eval-every", "2",
                                                                   "--expectation-warmup-steps", "2"])  # fmt: skip
    assert main(args) == 130  # interrupted in step 2: last/ holds step 1, saved in YOSO-E mode
    assert json.loads((run_dir / "last" / "config.json").read_text())["use_expectation"] is True
    assert main([*args, "--resume"]) == 0
    kinds = [kind for kind, training in calls if training]  # training steps (evaluation runs without grad)
    assert kinds == ["yoso-e", "yoso-e", "yoso-e", "yoso", "yoso"]  # step 2 twice: interrupted, then resumed
    # evaluations from the warm-up's last step on (steps 2 and 4, and the test) already sample
    assert {kind for kind, training in calls if not training} == {"yoso"}
    assert json.loads((run_dir / "last" / "config.json").read_text())["use_expectation"] is False


@pytest.mark.parametrize("attention, op", [("yoso", "yoso_lsh"), ("yoso-e", "yoso_expectation")])
def test_hash_code_len_schedule_sets_tau_of_every_training_step(tmp_path, monkeypatch, attention, op):
    from yoso_attention.models.yoso import layers_yoso

    taus = []

    def spy(*args, _op=getattr(layers_yoso, op), **kwargs):
        if torch.is_grad_enabled():
            taus.append(kwargs["hash_code_len"])
        return _op(*args, **kwargs)

    monkeypatch.setattr(layers_yoso, op, spy)
    run_dir = tmp_path / "run"
    extra = ["--num-layers", "1", "--attention", attention, "--hash-code-len", "6", "--hash-code-len-start", "2",
             "--hash-code-len-warmup-steps", "4"]  # fmt: skip
    assert main(train_args(run_dir, tmp_path / "cache", steps=6, extra=extra)) == 0
    assert taus == [2, 3, 4, 5, 6, 6]
    assert json.loads((run_dir / "last" / "config.json").read_text())["hash_code_len"] == 6


def test_plot_labels_name_the_expectation_warmup(tmp_path):
    from yoso_attention.training.plot import run_label, run_styles

    for name, warmup in (("plain", 0), ("warm", 200)):
        (tmp_path / name).mkdir()
        write(tmp_path / name / "args.json", json.dumps({"attention": "yoso", "seed": 1,
                                                          "expectation_warmup_steps": warmup}))  # fmt: skip
    assert run_label(tmp_path / "plain") == "yoso, seed 1"
    assert run_label(tmp_path / "warm") == "yoso after 200 YOSO-E steps, seed 1"
    (tmp_path / "tau").mkdir()
    write(tmp_path / "tau" / "args.json", json.dumps({"attention": "yoso", "seed": 0, "hash_code_len": 8,
                                                      "hash_code_len_start": 2, "hash_code_len_warmup_steps": 600}))
    assert run_label(tmp_path / "tau") == "yoso, tau 2->8 over 600 steps, seed 0"
    (plain, warm) = run_styles([tmp_path / "plain", tmp_path / "warm"], ["C0", "C1"])
    assert plain[0] != warm[0]  # a different recipe gets its own color


@pytest.mark.parametrize("every,calls", [(2, 3), (4, 1), (0, 0)], ids=["every2", "every4", "never"])
def test_training_returns_free_heap_memory_every_few_steps(tmp_path, monkeypatch, every, calls):
    from yoso_attention import heap
    from yoso_attention.training import loop

    assert heap.release_free_heap() is True  # glibc, as on the machines the suite runs on
    trims = []
    monkeypatch.setattr(loop, "release_free_heap", lambda: trims.append(1))
    run_dir = tmp_path / "run"
    args = train_args(run_dir, tmp_path / "cache", steps=6, extra=["--num-layers", "1", "--trim-memory-every",
                                                                   str(every)])  # fmt: skip
    assert main(args) == 0
    assert len(trims) == calls  # after steps 2, 4, 6 / 4 / never of the 6
