"""The ListOps generator's labels, checked by an independent evaluator written here."""

import statistics

from yoso_attention.data import listops


def independent_value(text: str) -> int:
    stack: list[list] = []
    value = None
    for word in text.split():
        if word.startswith("["):
            stack.append([word[1:]])
        elif word == "]":
            op, *args = stack.pop()
            value = {"MAX": max(args), "MIN": min(args), "SM": sum(args) % 10,
                     "MED": int(statistics.median(args))}[op]  # fmt: skip
            if stack:
                stack[-1].append(value)
        else:
            stack[-1].append(int(word)) if stack else None
            value = int(word) if not stack else value
    return value


def test_labels_match_an_independent_evaluator():
    spec = listops.ListOpsSpec(num_examples=400, min_length=5, max_length=200, max_depth=5, seed=3)
    examples = listops.generate(spec)
    assert len(examples) == 400
    for example in examples:
        assert independent_value(example["text"]) == example["label"]
        assert 5 <= len(listops.tokenize(example["text"])) - 1 <= 200
    assert len({e["label"] for e in examples}) == 10


def test_generation_is_seeded_and_cached(tmp_path):
    spec = listops.ListOpsSpec(num_examples=20, max_length=60, seed=1)
    assert listops.generate(spec) == listops.generate(spec)
    assert listops.generate(spec) != listops.generate(listops.ListOpsSpec(num_examples=20, max_length=60, seed=2))
    first = listops.load_or_generate(spec, tmp_path)
    assert len(list(tmp_path.glob("listops-*.jsonl"))) == 1
    assert listops.load_or_generate(spec, tmp_path) == first


def test_first_operator_baseline_applies_the_rule_fitted_on_train():
    train = [{"text": "[MAX 9 1 ]", "label": 9}, {"text": "[MAX 9 2 ]", "label": 9}, {"text": "[MAX 1 2 ]", "label": 2},
             {"text": "[MIN 0 4 ]", "label": 0}]  # fmt: skip
    examples = [{"text": "[MAX 3 9 ]", "label": 9}, {"text": "[MAX 3 4 ]", "label": 4},
                {"text": "[MIN 0 7 ]", "label": 0}, {"text": "[SM 1 2 ]", "label": 3}]  # fmt: skip
    assert listops.first_operator_baseline(train, examples) == 0.5  # MAX -> 9, MIN -> 0; SM unseen: wrong


def test_lra_distribution_is_mostly_decided_by_the_first_operator():
    spec = listops.ListOpsSpec(num_examples=2000, max_length=300, max_depth=10, max_args=10, leaf_prob=0.75, seed=4)
    rows = listops.generate(spec)
    assert 0.28 < listops.first_operator_baseline(rows[:1000], rows[1000:]) < 0.40
