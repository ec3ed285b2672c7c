"""``yoso train`` arguments: presets resolve to their recipe, explicit flags override them, every option
explains itself."""

import pytest

from yoso_attention.cli import build_parser
from yoso_attention.training.args import PRESETS, TrainArgs, resolve_args


def parse(*argv):
    from yoso_attention.cli import _explicit_train_args

    return resolve_args(_explicit_train_args(build_parser().parse_args(["train", *argv])))


def test_lra_listops_preset_is_the_authors_recipe():
    args = parse("--preset", "lra-listops")
    recipe = dict(max_length=2000, min_length=500, max_depth=10, max_args=10, train_examples=96000,
                  eval_examples=2000, test_examples=2000, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=2, pooling="mean", dropout=0.1, batch_size=32, lr=1e-4, warmup_steps=1000,
                  lr_schedule="linear", max_steps=5000, weight_decay=0.0, num_hash=32, hash_code_len=11)  # fmt: skip
    assert {k: getattr(args, k) for k in recipe} == recipe
    assert args.output_dir == "runs/lra-listops" and args.attention == "yoso"


def test_mqar_preset_is_the_studied_recipe_and_validates():
    args = parse("--preset", "mqar")
    recipe = dict(task="mqar", attention="yoso-e", max_length=128, mqar_pairs=8, mqar_vocab_size=256,
                  hidden_size=64, num_layers=2, num_heads=2, conv_window=3, dropout=0.0, lr=1e-2, weight_decay=0.3,
                  max_steps=1200, hash_code_len=8, hash_code_len_start=2, hash_code_len_warmup_steps=300)  # fmt: skip
    assert {k: getattr(args, k) for k in recipe} == recipe
    assert args.output_dir == "runs/mqar"
    args.validate()
    softmax = parse("--preset", "mqar", "--attention", "softmax")  # the preset's tau schedule is YOSO-E's
    assert softmax.attention == "softmax" and softmax.hash_code_len_start is None
    softmax.validate()
    fixed = parse("--preset", "mqar", "--hash-code-len-warmup-steps", "0")  # the documented way to a fixed tau
    assert (fixed.hash_code_len_start, fixed.hash_code_len_warmup_steps) == (None, 0)
    fixed.validate()
    longer = parse("--preset", "mqar", "--hash-code-len-start", "3", "--hash-code-len-warmup-steps", "600")
    assert (longer.hash_code_len_start, longer.hash_code_len_warmup_steps) == (3, 600)


def test_a_presets_hashing_follows_the_length_rule_at_a_longer_max_length(capsys):
    """The preset's tau is for its own length: longer fresh runs get hashing_for_length's tau and m for each field
    the command does not set; shorter runs and softmax keep the preset's (--init-from: the test further down)."""
    from yoso_attention.models.yoso.convert import hashes_for_misses, hashing_for_length

    longer = parse("--preset", "mqar", "--max-length", "1024")
    assert (longer.hash_code_len, longer.num_hash) == hashing_for_length(8, 16, 128, 1024) == (11, 16)
    assert (longer.hash_code_len_start, longer.hash_code_len_warmup_steps) == (2, 300)  # the schedule's target moves
    assert "--hash-code-len 8 -> 11 by the length rule" in capsys.readouterr().err
    given_tau = parse("--preset", "mqar", "--max-length", "4096", "--hash-code-len", "9")
    assert (given_tau.hash_code_len, given_tau.num_hash) == (9, 16)  # 16 hashes cover tau 9's misses
    assert hashes_for_misses(9) <= 16  # else the given tau would raise m (as yoso extend does)
    given_m = parse("--preset", "mqar", "--max-length", "2048", "--attention", "yoso", "--num-hash", "4")
    assert (given_m.hash_code_len, given_m.num_hash) == (12, 4)
    listops = parse("--preset", "lra-listops", "--max-length", "4000")
    assert (listops.hash_code_len, listops.num_hash) == (12, 32)
    capsys.readouterr()
    unchanged_runs = [("mqar", "--max-length", "64"), ("lra-listops", "--max-length", "1000"),
                      ("mqar", "--max-length", "1024", "--attention", "softmax")]  # fmt: skip
    for unchanged in (parse("--preset", *flags) for flags in unchanged_runs):
        assert unchanged.hash_code_len == PRESETS[unchanged.preset]["hash_code_len"]
    assert "length rule" not in capsys.readouterr().err


def test_explicit_flags_override_the_preset():
    args = parse("--preset", "lra-listops", "--max-steps", "300", "--attention", "softmax", "--lr", "1e-3")
    assert (args.max_steps, args.attention, args.lr) == (300, "softmax", 1e-3)
    assert args.hidden_size == PRESETS["lra-listops"]["hidden_size"]


def test_without_a_preset_the_defaults_apply():
    args = parse()
    assert args.max_steps == TrainArgs().max_steps and args.output_dir == "runs/listops"
    assert parse("--task", "text", "--train-file", "x.csv").output_dir == "runs/text"


def test_every_train_option_has_a_help_line_with_its_choices():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and action.help != action.dest.replace("_", " "), action.dest
    text = train.format_help()
    assert "{listops,text,mlm,mqar}" in text and "{cosine,linear,constant}" in text and "{lra-listops,mqar}" in text


def test_unknown_preset_is_an_error():
    with pytest.raises(ValueError, match="--preset 'nope'"):
        resolve_args({"preset": "nope"})


@pytest.mark.parametrize("flag, value", [("max_args", 1), ("max_depth", 0), ("leaf_prob", 1.5)])
def test_invalid_listops_distribution_is_an_error(flag, value):
    with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')}"):
        resolve_args({flag: value}).validate()


def test_yoso_backward_sets_the_configs_lsh_backward():
    from yoso_attention.training.loop import build_model

    for flag, lsh_backward in (("lsh", True), ("expectation", False)):
        args = parse("--yoso-backward", flag)
        assert build_model(args, vocab_size=20, pad_id=0, num_classes=10).config.lsh_backward is lsh_backward
    assert parse().yoso_backward == "lsh"
    with pytest.raises(ValueError, match="--yoso-backward 'dense'"):
        resolve_args({"yoso_backward": "dense"}).validate()
    for attention in ("softmax", "yoso-e"):  # no sampled forward whose gradients the flag could replace
        with pytest.raises(ValueError, match=f"--yoso-backward 'expectation' applies to --attention yoso only, "
                                             f"got --attention {attention}"):  # fmt: skip
            resolve_args({"yoso_backward": "expectation", "attention": attention}).validate()


def test_expectation_warmup_needs_sampled_yoso_and_a_non_negative_count():
    assert parse().expectation_warmup_steps == 0
    assert parse("--expectation-warmup-steps", "200").expectation_warmup_steps == 200
    with pytest.raises(ValueError, match="--expectation-warmup-steps must be >= 0, got -1"):
        resolve_args({"expectation_warmup_steps": -1}).validate()
    with pytest.raises(ValueError, match="--expectation-warmup-steps 50 must be below --max-steps 50"):
        resolve_args({"expectation_warmup_steps": 50, "max_steps": 50}).validate()
    for attention in ("softmax", "yoso-e"):
        with pytest.raises(ValueError, match=f"--expectation-warmup-steps applies to --attention yoso only, "
                                             f"got --attention {attention}"):  # fmt: skip
            resolve_args({"expectation_warmup_steps": 5, "attention": attention}).validate()


def test_hash_code_len_schedule_is_linear_rounded_and_checked():
    from yoso_attention.training.loop import hash_code_len_at

    args = parse("--hash-code-len", "8", "--hash-code-len-start", "2", "--hash-code-len-warmup-steps", "600")
    args.validate()
    assert [hash_code_len_at(args, step) for step in (0, 100, 150, 300, 599, 600, 5000)] == [2, 3, 4, 5, 8, 8, 8]
    assert parse("--attention", "yoso-e").hash_code_len_start is None
    bad = [({"hash_code_len_start": 2}, "needs both --hash-code-len-start and --hash-code-len-warmup-steps > 0, "
                                        "got 2 and 0"),
           ({"hash_code_len_warmup_steps": 5}, "got None and 5"),
           ({"hash_code_len_warmup_steps": -1}, "--hash-code-len-warmup-steps must be >= 0, got -1"),
           ({"hash_code_len_start": 9, "hash_code_len_warmup_steps": 5, "hash_code_len": 8},
            r"--hash-code-len-start must be in \[1, --hash-code-len 8\], got 9"),
           ({"hash_code_len_start": 0, "hash_code_len_warmup_steps": 5}, "got 0"),
           ({"hash_code_len_start": 2, "hash_code_len_warmup_steps": 60, "max_steps": 50},
            "--hash-code-len-warmup-steps 60 must be <= --max-steps 50"),
           ({"hash_code_len_start": 2, "hash_code_len_warmup_steps": 5, "attention": "softmax"},
            "applies to --attention yoso or yoso-e, got --attention softmax")]  # fmt: skip
    for values, message in bad:
        with pytest.raises(ValueError, match=message):
            resolve_args(values).validate()


def test_sampled_yoso_from_its_initialisation_gets_the_tau_schedule_and_the_gaussian_hash(capsys):
    def recipe(args):
        return args.hash_code_len_start, args.hash_code_len_warmup_steps, args.hash

    assert recipe(parse()) == (2, 300, "gaussian")  # a quarter of the default 1200 steps
    assert "tau 2 -> 6 over the first 300 steps, --hash gaussian" in capsys.readouterr().err
    listops_study = parse("--preset", "lra-listops", "--max-steps", "600")
    assert recipe(listops_study) == (2, 150, "gaussian") and listops_study.hash_code_len == 11
    assert recipe(parse("--preset", "mqar", "--attention", "yoso", "--max-steps", "3000")) == (2, 750, "gaussian")
    assert recipe(parse("--hash", "fast")) == (2, 300, "fast")  # an explicit hash is kept
    assert recipe(parse("--max-steps", "3")) == (2, 1, "gaussian")
    parse("--max-steps", "3").validate()
    kept = [("--hash-code-len-warmup-steps", "0"), ("--hash-code-len-start", "3", "--hash-code-len-warmup-steps", "9"),
            ("--expectation-warmup-steps", "200"), ("--attention", "yoso-e"), ("--attention", "softmax"),
            ("--hash-code-len", "2")]  # fmt: skip
    for flags in kept:
        args = parse(*flags)
        assert args.hash == "auto" and args.hash_code_len_start in (None, 3), flags
        args.validate()
    assert resolve_args({"init_from": "some/model"}).hash_code_len_start is None


def test_recompute_hash_codes_reaches_fresh_and_loaded_models(tmp_path):
    from yoso_attention.training.loop import build_model

    assert parse().recompute_hash_codes is False
    model = build_model(parse("--recompute-hash-codes"), vocab_size=20, pad_id=0, num_classes=10)
    assert model.config.recompute_hash_codes is True
    model.save_pretrained(tmp_path / "m")
    loaded = build_model(parse("--init-from", str(tmp_path / "m")), vocab_size=20, pad_id=0, num_classes=10)
    assert loaded.config.recompute_hash_codes is False  # a training setting: the flag decides, not the checkpoint


def test_trim_memory_every_is_a_non_negative_step_count():
    assert parse().trim_memory_every == 10
    assert parse("--trim-memory-every", "0").trim_memory_every == 0
    with pytest.raises(ValueError, match=r"--trim-memory-every must be >= 0 \(0: never\), got -1"):
        resolve_args({"trim_memory_every": -1}).validate()


def test_train_help_groups_every_option_once():
    from dataclasses import fields

    from yoso_attention.training.args import OPTION_GROUPS

    grouped = [name for names in OPTION_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in fields(TrainArgs))  # each field in exactly one group
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    titles = {g.title: [a.dest for a in g._group_actions] for g in train._action_groups}
    for group, names in OPTION_GROUPS.items():
        assert titles[group] == list(names)
    help_text = train.format_help()
    assert all(f"\n{group}:\n" in help_text for group in OPTION_GROUPS)


def test_version_flag_prints_the_package_version(capsys):
    import yoso_attention

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"yoso-attention {yoso_attention.__version__}"


def test_the_last_line_of_a_run_says_accuracy_baselines_and_throughput():
    from yoso_attention.cli import summary_line

    line = summary_line({"test_accuracy": 0.9512, "test_sequence_accuracy": 0.61, "chance_baseline": 0.125,
                         "sequence_chance_baseline": 2.5e-05, "tokens_per_second": 22122.4})  # fmt: skip
    assert line == ("test accuracy 0.951, sequence accuracy 0.610 (baselines: chance 0.125, sequence chance 0.000); "
                    "trained at 22,122 tokens/s")  # fmt: skip
    mlm = summary_line({"test_accuracy": 0.32, "test_perplexity": 20.04, "tokens_per_second": 1000.0})
    assert mlm == "test accuracy 0.320, perplexity 20.04; trained at 1,000 tokens/s"


def test_qk_and_norm_weight_decay_put_their_parameters_in_their_own_groups():
    import yoso_attention
    from tests.models.conftest import tiny_config
    from yoso_attention.training.loop import parameter_groups

    model = yoso_attention.YosoForTokenClassification(tiny_config())
    one = parameter_groups(model, parse("--weight-decay", "0.05"))
    assert len(one) == 1 and one[0]["weight_decay"] == 0.05
    assert len(one[0]["params"]) == len(list(model.parameters()))
    rest, qk = parameter_groups(model, parse("--weight-decay", "0.05", "--qk-weight-decay", "1.0"))
    layers = model.config.num_hidden_layers
    expected = {id(p) for layer in model.yoso.encoder.layer for lin in (layer.attention.self.query,
                layer.attention.self.key) for p in lin.parameters()}  # fmt: skip
    assert {id(p) for p in qk["params"]} == expected and len(expected) == 4 * layers
    assert (rest["weight_decay"], qk["weight_decay"]) == (0.05, 1.0)
    assert len(rest["params"]) + len(qk["params"]) == len(list(model.parameters()))
    rest, qk, norm = parameter_groups(model, parse("--qk-weight-decay", "1.0", "--norm-weight-decay", "0"))
    vectors = {id(p) for name, p in model.named_parameters() if p.ndim == 1 and id(p) not in expected}
    assert {id(p) for p in norm["params"]} == vectors and norm["weight_decay"] == 0.0
    assert all("LayerNorm" in name or name.endswith("bias") for name, p in model.named_parameters() if id(p) in vectors)
    assert {id(p) for p in qk["params"]} == expected and all(p.ndim == 2 for p in rest["params"])
    rest, norm = parameter_groups(model, parse("--weight-decay", "0.05", "--norm-weight-decay", "0"))
    assert len(rest["params"]) + len(norm["params"]) == len(list(model.parameters()))
    assert {id(p) for p in norm["params"]} == {id(p) for p in model.parameters() if p.ndim == 1}
    for option in ("--weight-decay", "--qk-weight-decay", "--norm-weight-decay"):
        with pytest.raises(ValueError, match=f"{option} must be >= 0, got -1.0"):
            parse(option, "-1").validate()


def test_init_from_a_shorter_model_repeats_its_trained_positions(tmp_path, capsys):
    import torch

    from yoso_attention.training.loop import build_model

    short = build_model(parse("--max-length", "48"), vocab_size=20, pad_id=0, num_classes=10)
    short.save_pretrained(tmp_path / "m")
    rows = short.yoso.embeddings.position_embeddings.weight.detach()  # (2 + 48, h): two padding rows first
    long = build_model(parse("--max-length", "100", "--init-from", str(tmp_path / "m"), "--repeat-positions"),
                       vocab_size=20, pad_id=0, num_classes=10)  # fmt: skip
    table = long.yoso.embeddings.position_embeddings.weight.detach()  # (2 + 100, h)
    assert long.config.max_position_embeddings == 100 and table.shape == (102, rows.shape[1])
    expected = torch.cat([rows[:2], rows[2:].repeat(3, 1)[:100]])
    torch.testing.assert_close(table, expected, rtol=0, atol=0)
    assert "--init-from --repeat-positions: 48 -> 100 positions (the source's rows repeated); tau 6 -> 7, m 16 -> 16 " \
           "by the length rule; every other weight unchanged" in capsys.readouterr().err
    same = build_model(parse("--max-length", "40", "--init-from", str(tmp_path / "m"), "--repeat-positions"),
                       vocab_size=20, pad_id=0, num_classes=10)  # fmt: skip
    assert same.config.max_position_embeddings == 48  # a shorter run keeps the model's positions
    assert (short.config.hash_code_len, long.config.hash_code_len, same.config.hash_code_len) == (6, 7, 6)
    assert long.config.num_hash == same.config.num_hash == 16  # the length rule: tau + log2(100 / 48), rounded
    with pytest.raises(ValueError, match="exceeds the 48 positions .* add --repeat-positions"):
        build_model(parse("--max-length", "100", "--init-from", str(tmp_path / "m")), vocab_size=20, pad_id=0,
                    num_classes=10)  # fmt: skip


def test_init_from_a_head_for_other_classes_says_which(tmp_path):
    from yoso_attention.training.loop import build_model

    build_model(parse("--task", "mqar", "--mqar-vocab-size", "20"), vocab_size=20, pad_id=0,
                num_classes=9).save_pretrained(tmp_path / "m")  # fmt: skip
    again = build_model(parse("--task", "mqar", "--mqar-vocab-size", "20", "--init-from", str(tmp_path / "m")),
                        vocab_size=20, pad_id=0, num_classes=9)  # fmt: skip
    assert again.num_labels == 9
    with pytest.raises(ValueError, match=r"--mqar-vocab-size 40 gives 19 values, but the model in .*m predicts 9: it "
                                         r"was trained with --mqar-vocab-size 20"):  # fmt: skip
        build_model(parse("--task", "mqar", "--mqar-vocab-size", "40", "--init-from", str(tmp_path / "m")),
                    vocab_size=40, pad_id=0, num_classes=19)  # fmt: skip
    build_model(parse("--task", "text"), vocab_size=20, pad_id=0, num_classes=3).save_pretrained(tmp_path / "t")
    with pytest.raises(ValueError, match=r"the model in .*t predicts 3 classes, the data has 4"):
        build_model(parse("--task", "text", "--init-from", str(tmp_path / "t")), vocab_size=20, pad_id=0,
                    num_classes=4)  # fmt: skip


def test_init_from_keeps_the_models_hashing_unless_given_and_ignores_a_presets(tmp_path):
    from yoso_attention.training.loop import build_model

    assert (parse().num_hash, parse().hash_code_len) == (16, 6)  # a fresh model
    model = build_model(parse("--max-length", "128", "--num-hash", "4", "--hash-code-len", "5"), vocab_size=20,
                        pad_id=0, num_classes=10)  # fmt: skip
    model.save_pretrained(tmp_path / "m")
    kept = parse("--preset", "mqar", "--init-from", str(tmp_path / "m"))
    assert (kept.num_hash, kept.hash_code_len) == (None, None)  # not the preset's tau 8
    assert kept.hash_code_len_start is None  # nor its tau schedule, which is for a fresh model
    kept.validate()
    loaded = build_model(kept, vocab_size=20, pad_id=0, num_classes=8)
    assert (loaded.config.num_hash, loaded.config.hash_code_len) == (4, 5)
    given = parse("--init-from", str(tmp_path / "m"), "--max-length", "300", "--repeat-positions", "--num-hash", "8",
                  "--hash-code-len", "7")  # fmt: skip
    loaded = build_model(given, vocab_size=20, pad_id=0, num_classes=10)
    assert (loaded.config.num_hash, loaded.config.hash_code_len) == (8, 7)  # given: they replace the rule's
    with pytest.raises(ValueError, match="a tau schedule with --init-from needs --hash-code-len"):
        parse("--init-from", str(tmp_path / "m"), "--hash-code-len-start", "2", "--hash-code-len-warmup-steps",
              "5").validate()  # fmt: skip


def test_repeat_positions_needs_init_from():
    with pytest.raises(ValueError, match="--repeat-positions lengthens an --init-from model; got no --init-from"):
        parse("--repeat-positions").validate()
