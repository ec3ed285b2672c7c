"""``yoso train --task mqar``: the generator, its labels, the metrics, bad input, resume and ``yoso predict``."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from tests.cli.test_cli import assert_same_curves, curves, yoso
from yoso_attention.cli import main
from yoso_attention.data import mqar
from yoso_attention.training.loop import batch_sums


def test_keys_values_and_queries_follow_the_layout():
    spec = mqar.MqarSpec(num_examples=300, length=96, num_pairs=8, vocab_size=100, seed=3)
    ids = mqar.generate(spec).astype(np.int64)
    assert ids.shape == (300, 96)
    for row in ids:
        keys, values = row[0:16:2], row[1:16:2]
        assert len(set(keys)) == 8 and len(set(values)) == 8  # distinct within the sequence
        assert all(2 <= k < spec.first_value for k in keys) and all(spec.first_value <= v < 100 for v in values)
        tail = row[16:]
        query_pos = [16 + i for i, t in enumerate(tail) if t != mqar.FILLER_ID]
        assert sorted(row[query_pos]) == sorted(keys)  # each key queried once, filler elsewhere
        assert all((p - 16) % 2 == 0 for p in query_pos)  # Zoology's slots: every other position after the pairs
    assert mqar.PAD_ID not in ids


def test_each_query_is_labelled_with_its_keys_value_and_nothing_else():
    spec = mqar.MqarSpec(num_examples=200, length=64, num_pairs=6, vocab_size=40, filler="random", seed=1)
    ids = mqar.generate(spec).astype(np.int64)
    labels = mqar.labels(ids, 6, spec.first_value)
    for row, lab in zip(ids, labels):
        pairs = {int(row[2 * i]): int(row[2 * i + 1]) for i in range(6)}  # independent of mqar.labels
        expected = np.full(64, -100)
        for pos in range(12, 64):
            if int(row[pos]) in pairs:
                expected[pos] = pairs[int(row[pos])] - spec.first_value
        assert np.array_equal(lab, expected)
        assert (lab != -100).sum() == 6  # random filler never repeats a key of the sequence
        assert not (lab[:12] != -100).any()


def test_keys_values_and_slots_are_drawn_uniformly():
    """Keys and values come in a random order within a row (not sorted, not paired by rank), each id about equally
    often; at the shortest length, four tokens a pair, every query slot holds a query."""
    spec = mqar.MqarSpec(num_examples=2000, length=64, num_pairs=4, vocab_size=42, seed=2)  # 20 keys, 20 values
    ids = mqar.generate(spec).astype(np.int64)
    keys, values = ids[:, 0:8:2], ids[:, 1:8:2]  # (rows, pairs)
    for drawn in (keys, values):
        assert (np.diff(drawn, axis=1) > 0).all(1).mean() < 0.1  # ascending rows: 1/4! = 0.04 for a random order
        counts = np.bincount(drawn.ravel())[drawn.min() :]  # 8000 draws of 20 ids: 400 +- 20 each
        assert len(counts) == 20 and counts.min() > 300 and counts.max() < 500
    key_rank, value_rank = keys.argsort(1).argsort(1), values.argsort(1).argsort(1)
    assert (key_rank == value_rank).all(1).mean() < 0.1  # the smallest key with the smallest value: 1/4! again
    shortest = mqar.generate(mqar.MqarSpec(num_examples=50, length=16, num_pairs=4, vocab_size=42, seed=2))
    assert (shortest[:, 8::2] != mqar.FILLER_ID).all()


def test_random_filler_with_many_pairs_takes_memory_of_the_ids_not_of_ids_times_pairs():
    import tracemalloc

    spec = mqar.MqarSpec(num_examples=2000, length=1024, num_pairs=200, vocab_size=512, filler="random", seed=0)
    tracemalloc.start()
    ids = mqar.generate(spec)
    labels = mqar.labels(ids[:256], 200, spec.first_value)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2**20  # (rows, n) int64 arrays: 16 MB each; comparing every key with every token took 261 MB
    assert ((labels != -100).sum(1) == 200).all()


def test_gaps_follow_a_power_law():
    spec = mqar.MqarSpec(num_examples=3000, length=256, num_pairs=4, vocab_size=64, power_a=0.01, seed=0)
    ids = mqar.generate(spec)
    slots = [(p - 8) // 2 for row in ids for p in range(8, 256) if row[p] != mqar.FILLER_ID]
    counts = Counter(slots)
    # Weight of slot g is (g + 1) ** -0.99: early slots are far more likely, drawn without replacement.
    assert counts[0] > 3 * counts[10] > 0 and counts[0] > counts[1] > counts[5]


def test_same_seed_same_data_and_cache(tmp_path):
    spec = mqar.MqarSpec(num_examples=50, length=32, num_pairs=4, vocab_size=30, seed=5)
    assert np.array_equal(mqar.generate(spec), mqar.generate(spec))
    other = mqar.MqarSpec(num_examples=50, length=32, num_pairs=4, vocab_size=30, seed=6)
    assert not np.array_equal(mqar.generate(spec), mqar.generate(other))
    first = mqar.load_or_generate(spec, tmp_path)
    assert len(list(tmp_path.glob("mqar-*.npy"))) == 1 and not list(tmp_path.glob("*.tmp*"))
    assert np.array_equal(mqar.load_or_generate(spec, tmp_path), first)
    assert np.array_equal(mqar.load_or_generate(other, tmp_path), mqar.generate(other))  # its own entry
    assert len(list(tmp_path.glob("mqar-*.npy"))) == 2


@pytest.mark.parametrize(
    "spec, match",
    [
        (dict(length=31, num_pairs=8), "--mqar-pairs 8 needs --max-length >= 32"),
        (dict(num_pairs=16, vocab_size=30), "--mqar-vocab-size 30 has too few keys or values for --mqar-pairs 16"),
        (dict(num_pairs=0), "--mqar-pairs must be >= 1"),
        (dict(power_a=0.0), "--mqar-power-a must be > 0"),
        (dict(filler="noise"), "--mqar-filler 'noise'"),
    ],
)
def test_bad_specs_name_the_option(spec, match):
    with pytest.raises(ValueError, match=match):
        mqar.MqarSpec(**{"length": 64, "num_pairs": 4, "vocab_size": 64, **spec}).validate()


def test_metrics_on_hand_made_logits():
    labels = torch.tensor([[-100, 2, -100, 0], [1, -100, -100, 2]])  # 2 sequences, 2 queries each
    logits = torch.full((2, 4, 3), -5.0)
    logits[0, 1, 2] = logits[0, 3, 0] = 5.0  # sequence 0: both queries right
    logits[1, 0, 1] = logits[1, 3, 0] = 5.0  # sequence 1: the second query wrong
    logits[0, 0, 1] = 5.0  # an unlabelled position's prediction counts for nothing
    correct, loss, count, all_right, sequences = batch_sums(logits, labels).tolist()
    assert (correct, count, all_right, sequences) == (3, 4, 1, 2)
    expected = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100], reduction="sum")
    assert loss == pytest.approx(float(expected))
    assert mqar.chance(4) == {"chance": 0.25, "sequence_chance": 1 / math.factorial(4)}


def test_predict_finds_the_queries_of_a_sequence():
    first_value = 20
    ids = [2, 25, 3, 31, 1, 3, 1, 2, 4, 4]  # pairs (2, 25), (3, 31); 4 is a key never paired with a value
    assert mqar.query_positions(ids, first_value) == [(5, 3, 2), (7, 2, 0)]


MQAR = ["--task", "mqar", "--max-length", "32", "--mqar-pairs", "4", "--mqar-vocab-size", "24", "--train-examples",
        "64", "--eval-examples", "16", "--test-examples", "16", "--hidden-size", "32", "--num-layers", "1",
        "--num-heads", "2", "--intermediate-size", "32", "--batch-size", "8", "--warmup-steps", "1", "--num-hash",
        "4", "--eval-every", "2", "--save-every", "2"]  # fmt: skip


@pytest.mark.parametrize("attention", ["yoso", "yoso-e", "softmax"])
def test_train_reports_query_and_sequence_accuracy_with_chance(attention, tmp_path):
    out = tmp_path / "run"
    args = ["train", *MQAR, "--attention", attention, "--max-steps", "4", "--output-dir", str(out),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chance_baseline"] == 0.25 and summary["sequence_chance_baseline"] == 1 / 24
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [r["step"] for r in evals] == [2, 4]
    assert {"accuracy", "sequence_accuracy", "chance", "sequence_chance"} <= set(evals[-1])
    assert (out / "curves.png").stat().st_size > 1000
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["architectures"] == ["YosoForTokenClassification"] and len(config["id2label"]) == 11
    assert config["id2label"]["0"] == "13" and config["id2label"]["10"] == "23"  # labels name the value ids


def test_resume_matches_an_uninterrupted_run_and_predict_prints_values(tmp_path):
    # the same lr and tau at step 4 of 4 or 6 (the default tau schedule spans a quarter of --max-steps)
    cache = ["--cache-dir", str(tmp_path / "cache"), "--lr-schedule", "constant", "--hash-code-len-warmup-steps", "0"]
    main(["train", *MQAR, "--max-steps", "6", "--output-dir", str(tmp_path / "full"), *cache])
    main(["train", *MQAR, "--max-steps", "4", "--output-dir", str(tmp_path / "cut"), *cache])
    main(["train", *MQAR, "--max-steps", "6", "--output-dir", str(tmp_path / "cut"), "--resume", *cache])
    assert_same_curves(curves(tmp_path / "cut"), curves(tmp_path / "full"))
    line = "2 14 3 20 1 1 3 1 2 1\n"
    out = yoso("predict", str(tmp_path / "full" / "last"), "--top-k", "2", cwd=tmp_path, input=line)
    (result,) = [json.loads(row) for row in out.stdout.splitlines()]
    assert [(q["position"], q["key"]) for q in result["predictions"]] == [(6, 3), (8, 2)]
    assert all(len(q["values"]) == 2 and 13 <= int(q["values"][0]["label"]) < 24 for q in result["predictions"])
    bad = yoso("predict", str(tmp_path / "full" / "last"), cwd=tmp_path, input="2 14 1 1\n", check=False)
    assert bad.returncode == 2 and "no query" in bad.stderr


def test_bad_mqar_options_are_errors_naming_them(tmp_path, capsys):
    code = main(["train", *MQAR, "--mqar-pairs", "9", "--output-dir", str(tmp_path / "x")])
    assert code == 2 and "--mqar-pairs 9 needs --max-length >= 36" in capsys.readouterr().err
