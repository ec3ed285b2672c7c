"""Behaviour beyond parity: padding, sampling mode, attention maps, checkpointing, autocast, compile."""

import os
from pathlib import Path

import pytest
import torch

import yoso_attention
from yoso_attention.models.yoso import layers_yoso
from tests.conftest import rel_err
from tests.models.conftest import padded_run, tiny_config


@pytest.mark.parametrize("use_expectation", [True, False], ids=["expectation", "sampling"])
def test_padding_equals_the_unpadded_run(use_expectation):
    model = yoso_attention.YosoModel(tiny_config(use_expectation=use_expectation, conv_window=3)).eval()
    out, short = padded_run(lambda ids, mask: model(ids, attention_mask=mask).last_hidden_state)
    assert rel_err(out[:, :20], short) < 1e-5


def test_softmax_baseline_with_conv_window_uses_the_convolution_and_the_mask():
    from yoso_attention.training.softmax import use_softmax_attention

    model = yoso_attention.YosoModel(tiny_config(conv_window=3)).eval()
    use_softmax_attention(model)
    out, short = padded_run(lambda ids, mask: model(ids, attention_mask=mask).last_hidden_state)
    assert rel_err(out[:, :20], short) < 1e-5
    short.sum().backward()
    assert model.encoder.layer[0].attention.self.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("window, n", [(1, 5), (3, 17), (5, 3), (7, 2)])
def test_value_convolution_equals_the_depthwise_conv2d_forward_and_backward(window, n):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, (window, 1), padding=(window // 2, 0), groups=3, bias=False)
    v = torch.randn(2, 3, n, 4, requires_grad=True)  # (batch, heads, n, head_dim)
    grad = torch.randn(2, 3, n, 4)
    ours = layers_yoso.value_convolution(v, conv.weight)
    ours_grads = torch.autograd.grad(ours, (v, conv.weight), grad)
    ref = conv(v)
    ref_grads = torch.autograd.grad(ref, (v, conv.weight), grad)
    assert rel_err(ours, ref) < 1e-6
    for got, want in zip(ours_grads, ref_grads):
        assert rel_err(got, want) < 1e-6
    model_layout = v.detach().transpose(1, 2).contiguous().transpose(1, 2)  # the projection's (batch, n, heads, d)
    assert rel_err(layers_yoso.value_convolution(model_layout, conv.weight), ref) < 1e-6
    assert layers_yoso.value_convolution(v.detach().bfloat16(), conv.weight).dtype == torch.bfloat16  # as autocast


def test_sampling_with_many_hashes_approaches_expectation():
    torch.manual_seed(0)
    exact = yoso_attention.YosoModel(tiny_config(hash_code_len=3)).eval()
    sampled = yoso_attention.YosoModel(tiny_config(hash_code_len=3, use_expectation=False, num_hash=1024)).eval()
    sampled.load_state_dict(exact.state_dict())
    ids = torch.randint(3, 99, (2, 24))
    few = yoso_attention.YosoModel(tiny_config(hash_code_len=3, use_expectation=False, num_hash=16)).eval()
    few.load_state_dict(exact.state_dict())
    want = exact(ids).last_hidden_state
    err_many, err_few = rel_err(sampled(ids).last_hidden_state, want), rel_err(few(ids).last_hidden_state, want)
    assert err_many < 0.05 and err_many < err_few / 3


@pytest.mark.parametrize("lsh_backward", [True, False], ids=["lshbwd", "densebwd"])
def test_sampling_mode_trains(lsh_backward):
    torch.manual_seed(0)
    cfg = tiny_config(use_expectation=False, num_hash=16, lsh_backward=lsh_backward, hidden_dropout_prob=0.0)
    model = yoso_attention.YosoForSequenceClassification(cfg)
    ids, labels = torch.randint(3, 99, (8, 16)), torch.randint(0, 3, (8,))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_sampled_query_and_key_gradients_point_where_yoso_e_gradients_do():
    # The loss above also falls with q/k gradients zeroed (the other weights memorise 8 examples); here the sampled
    # backward's q/k gradients, summed over 50 hash draws, must match the dense YOSO-E backward's on the same sampled
    # forwards. Measured (Gaussian hash): cosine 0.97-0.99 and norm ratio 0.79-0.88 for the four weights; the ratio
    # is not 1 because the forward's codes, which the sampled backward reuses, also shaped the upstream gradient.
    summed = {}
    for lsh_backward in (True, False):
        torch.manual_seed(0)
        cfg = tiny_config(use_expectation=False, num_hash=16, lsh_backward=lsh_backward, hidden_dropout_prob=0.0,
                          use_fast_hash=False)  # fmt: skip
        model = yoso_attention.YosoForSequenceClassification(cfg)
        ids, labels = torch.randint(3, 99, (8, 16)), torch.randint(0, 3, (8,))
        for seed in range(50):
            torch.manual_seed(100 + seed)
            model.zero_grad()
            model(ids, labels=labels).loss.backward()
            for name, p in model.named_parameters():
                if ".self.query.weight" in name or ".self.key.weight" in name:
                    summed.setdefault((lsh_backward, name), torch.zeros_like(p)).add_(p.grad)
    names = [name for lsh, name in summed if lsh]
    assert len(names) == 4
    for name in names:
        sampled, dense = summed[True, name].flatten(), summed[False, name].flatten()
        assert float(sampled @ dense) > 0.9 * float(sampled.norm() * dense.norm()), name
        assert 0.6 < float(sampled.norm() / dense.norm()) < 1.2, name


@pytest.mark.parametrize("use_expectation", [True, False], ids=["expectation", "sampling"])
def test_output_attentions_are_real_weights(use_expectation):
    model = yoso_attention.YosoModel(tiny_config(use_expectation=use_expectation, hidden_dropout_prob=0.0)).eval()
    ids, mask = torch.randint(3, 99, (2, 10)), torch.ones(2, 10)
    mask[1, 7:] = 0
    out = model(ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == 2
    for att in out.attentions:
        assert att.shape == (2, 4, 10, 10)
        assert (att >= 0).all() and (att <= 1).all()
        assert att[1, :, 7:].abs().sum() == 0 and att[1, :, :, 7:].abs().sum() == 0
        assert not torch.allclose(att, torch.zeros_like(att))


@pytest.mark.parametrize("use_expectation", [True, False], ids=["expectation", "sampling"])
def test_gradient_checkpointing_recomputes_with_the_same_hashes(use_expectation):
    cfg = tiny_config(use_expectation=use_expectation, hidden_dropout_prob=0.0, num_hash=4)
    torch.manual_seed(0)
    model = yoso_attention.YosoForSequenceClassification(cfg).train()
    ids, labels = torch.randint(3, 99, (2, 12)), torch.tensor([0, 2])

    def grads():
        model.zero_grad()
        torch.manual_seed(11)
        model(ids, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable() if hasattr(model, "activation_checkpointing_enable") else model.gradient_checkpointing_enable()
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


@pytest.mark.parametrize("use_expectation", [True, False], ids=["expectation", "sampling"])
def test_bf16_autocast_on_cpu(use_expectation):
    model = yoso_attention.YosoForMaskedLM(tiny_config(use_expectation=use_expectation, conv_window=3))
    ids = torch.randint(3, 99, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_a_sampling_model_trains_on_the_compiled_kernels_without_numba():
    """The compiled CPU kernels are the default: a sampling-mode model's forward and backward (hash, cumulation,
    weighted backward, unit rows) and YOSO-E's run without importing numba, whose runtime alone keeps ~105 MB
    resident (docs/guides/memory.md)."""
    import subprocess
    import sys

    script = (
        "import sys, torch, yoso_attention\n"
        "from tests.models.conftest import tiny_config\n"
        "from yoso_attention.ops.backend import active_paths\n"
        "for expectation in (False, True):\n"
        "    model = yoso_attention.YosoForMaskedLM(tiny_config(use_expectation=expectation)).train()\n"
        "    ids = torch.randint(3, 99, (2, 40))\n"
        "    model(ids, labels=ids).loss.backward()\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
        "print(active_paths()['cpu'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("YOSO_CPU_KERNELS", "YOSO_DISABLE_NUMBA")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("compiled kernels (_cpu_kernels"), proc.stdout


def test_torch_compile_runs_kernels_compiled_for_the_first_time(tmp_path):
    """With an empty numba cache the kernels' first calls happen inside the compiled model (a fresh install):
    numba's compiler runs inside the custom operators, which dynamo does not trace. Expectation mode only: its
    kernels compile in seconds, sampling mode's take minutes; all are called the same way."""
    import subprocess
    import sys

    script = (
        "import torch, yoso_attention\n"
        "from tests.models.conftest import tiny_config\n"
        "model = yoso_attention.YosoModel(tiny_config(use_expectation=True)).eval()\n"
        "ids = torch.randint(3, 99, (2, 12))\n"
        "out = torch.compile(model, backend='eager', fullgraph=True)(ids).last_hidden_state\n"
        "assert torch.allclose(out, model(ids).last_hidden_state, atol=1e-5)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "YOSO_CPU_KERNELS": "numba"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_return_dict_false_gives_transformers_tuples():
    model = yoso_attention.YosoForQuestionAnswering(tiny_config()).eval()
    ids = torch.randint(3, 99, (2, 9))
    out = model(ids, start_positions=torch.tensor([0, 3]), end_positions=torch.tensor([2, 30]), return_dict=False)
    assert len(out) == 3 and out[0].dim() == 0 and out[1].shape == (2, 9)


@pytest.mark.parametrize("chunking", ["auto", "config"])
def test_chunked_feed_forward_equals_one_chunk(chunking, monkeypatch):
    """Automatic chunking (FFN_CHUNK_FLOATS) and chunk_size_feed_forward change memory, not results."""
    torch.manual_seed(0)
    whole = yoso_attention.YosoForSequenceClassification(tiny_config(hidden_dropout_prob=0.0))
    overrides = {"chunk_size_feed_forward": 4} if chunking == "config" else {}
    chunked = yoso_attention.YosoForSequenceClassification(tiny_config(hidden_dropout_prob=0.0, **overrides))
    chunked.load_state_dict(whole.state_dict())
    ids = torch.randint(3, 99, (2, 17))
    labels = torch.tensor([0, 2])
    loss_whole = whole(ids, labels=labels).loss
    if chunking == "auto":
        monkeypatch.setattr(layers_yoso, "FFN_CHUNK_FLOATS", 2 * 37 * 5)  # (2, 5, 37) floats: 4 chunks of 17
    loss_chunked = chunked(ids, labels=labels).loss
    assert abs(loss_chunked.item() - loss_whole.item()) < 1e-6
    loss_whole.backward(), loss_chunked.backward()
    for (name, p), q in zip(whole.named_parameters(), chunked.parameters()):
        assert (p.grad - q.grad).abs().max() < 1e-6, name


def _saved_activation_bytes(model, ids, mask) -> int:
    """Bytes of the distinct storages that autograd keeps for the backward of one forward pass."""
    storages = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(ids, attention_mask=mask)
    return sum(storages.values())


def test_sampling_mode_keeps_for_backward_what_softmax_keeps_plus_the_codes():
    """Training memory: no unit rows and no second copy of the normalised context, so a layer keeps what the same
    layer with SDPA keeps, plus the int16 codes of every query and key (2 x m x 2 bytes a token and head), or
    with recompute_hash_codes only what SDPA keeps."""
    from yoso_attention.training.softmax import use_softmax_attention

    cfg = dict(use_expectation=False, num_hash=32, hash_code_len=11, max_position_embeddings=512,
               hidden_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    yoso = yoso_attention.YosoModel(tiny_config(**cfg)).train()
    softmax = yoso_attention.YosoModel(tiny_config(**cfg)).train()
    use_softmax_attention(softmax)
    batch, n, heads, layers = 2, 500, 4, 2
    ids, mask = torch.randint(3, 99, (batch, n)), torch.ones(batch, n)
    mask[1, 300:] = 0
    code_bytes = layers * batch * heads * n * 2 * 32 * 2
    yoso_bytes, softmax_bytes = _saved_activation_bytes(yoso, ids, mask), _saved_activation_bytes(softmax, ids, mask)
    assert yoso_bytes <= (softmax_bytes + code_bytes) * 1.01
    # recompute_hash_codes keeps the hash functions instead: at head dim 16 and tau 11 one hash function per
    # Hadamard part, each 3 x 16 float signs (a tenth of the codes' bytes here, and independent of n).
    yoso.config.recompute_hash_codes = True
    draw_bytes = layers * batch * heads * 32 * 3 * 16 * 4
    assert _saved_activation_bytes(yoso, ids, mask) <= softmax_bytes * 1.01 + draw_bytes


def _activation_allocations(model, ids) -> int:
    """Fresh fp32 tensors of one activation's size (batch x n x hidden) made by the ops of a forward and backward."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    size, fresh = ids.numel() * model.config.hidden_size, []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            inputs = {t.untyped_storage().data_ptr() for t in tensors}
            fresh.extend(t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.dtype == torch.float32
                         and t.numel() == size and t.untyped_storage().data_ptr() not in inputs)  # fmt: skip
            return out

    with Count():
        model(ids).last_hidden_state.sum().backward()
    return len(fresh)


def test_sampling_mode_copies_no_head_views():
    """The ops take the model's (batch, heads, n, d) head views where they lie and hand back the output and the
    gradients in that layout, as SDPA does: a layer's forward and backward make SDPA's activation-sized tensors
    plus YOSO's output normalisation and its gradient (until this release also 7 copies between layouts)."""
    from yoso_attention.training.softmax import use_softmax_attention

    cfg = dict(use_expectation=False, num_hash=8, hash_code_len=11, max_position_embeddings=512, hidden_size=64,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    yoso = yoso_attention.YosoModel(tiny_config(**cfg)).train()
    softmax = yoso_attention.YosoModel(tiny_config(**cfg)).train()
    use_softmax_attention(softmax)
    ids = torch.randint(3, 99, (2, 500))
    layers = yoso.config.num_hidden_layers
    assert _activation_allocations(yoso, ids) == _activation_allocations(softmax, ids) + 2 * layers


@pytest.mark.parametrize("use_expectation", [False, True], ids=["sampled", "expectation"])
def test_with_the_value_convolution_the_values_are_kept_once(use_expectation):
    """YOSO-C's convolution keeps the value projection's output; unpadded, the op keeps that very tensor instead
    of a contiguous copy of its rows, so a layer again keeps what SDPA's keeps (plus the codes when sampling)."""
    from yoso_attention.training.softmax import use_softmax_attention

    cfg = dict(use_expectation=use_expectation, num_hash=8, hash_code_len=11, use_fast_hash=False, conv_window=3,
               max_position_embeddings=512, hidden_size=64, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)  # fmt: skip
    yoso = yoso_attention.YosoModel(tiny_config(**cfg)).train()
    softmax = yoso_attention.YosoModel(tiny_config(**cfg)).train()
    use_softmax_attention(softmax)
    batch, n, heads, layers = 2, 500, 4, 2
    ids = torch.randint(3, 99, (batch, n))
    code_bytes = 0 if use_expectation else layers * batch * heads * n * 2 * 8 * 2
    value_bytes = layers * batch * n * 64 * 4  # what a second copy of the values would add
    yoso_bytes, softmax_bytes = _saved_activation_bytes(yoso, ids, None), _saved_activation_bytes(softmax, ids, None)
    assert yoso_bytes <= softmax_bytes + code_bytes + value_bytes / 10
