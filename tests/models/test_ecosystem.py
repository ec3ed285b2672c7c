"""The transformers ecosystem on a tiny model and a BPE tokenizer trained here (nothing downloaded)."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Trainer, TrainingArguments, pipeline

import yoso_attention
from tests.models.conftest import tiny_config

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "long sequences need linear attention",
    "yoso samples attention with locality sensitive hashing",
    "paris is the capital of france",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4: bos 0, pad 1, eos 2 as in YosoConfig
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=special))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")  # fmt: skip


def config(tokenizer, **kw):
    return tiny_config(vocab_size=len(tokenizer), use_expectation=False, num_hash=8, **kw)


def test_trainer_runs_a_few_steps(tokenizer, tmp_path):
    model = yoso_attention.YosoForSequenceClassification(config(tokenizer, num_labels=2))
    enc = tokenizer(CORPUS[:16], padding=True)
    data = [{"input_ids": i, "attention_mask": m, "labels": n % 2}
            for n, (i, m) in enumerate(zip(enc["input_ids"], enc["attention_mask"]))]  # fmt: skip
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                             report_to=[], logging_steps=1, save_strategy="no", use_cpu=True)  # fmt: skip
    result = Trainer(model=model, args=args, train_dataset=data).train()
    assert result.global_step == 4 and result.training_loss > 0


def test_pipelines_return_sensible_structures(tokenizer):
    text = "yoso samples attention with hashing"
    mlm = yoso_attention.YosoForMaskedLM(config(tokenizer)).eval()
    filled = pipeline("fill-mask", model=mlm, tokenizer=tokenizer)(f"yoso samples {tokenizer.mask_token}")
    assert len(filled) == 5 and {"score", "token", "token_str", "sequence"} <= filled[0].keys()

    clf = yoso_attention.YosoForSequenceClassification(config(tokenizer, num_labels=2)).eval()
    label = pipeline("text-classification", model=clf, tokenizer=tokenizer)(text)
    assert label[0]["label"] in ("LABEL_0", "LABEL_1") and 0 <= label[0]["score"] <= 1

    tagger = yoso_attention.YosoForTokenClassification(config(tokenizer, num_labels=3)).eval()
    tags = pipeline("token-classification", model=tagger, tokenizer=tokenizer)(text)
    assert all({"entity", "score", "word"} <= t.keys() for t in tags)

    # transformers 5.23 removed the question-answering pipeline; do its extractive steps by hand.
    qa = yoso_attention.YosoForQuestionAnswering(config(tokenizer)).eval()
    enc = tokenizer("what is the capital of france", "paris is the capital of france", return_tensors="pt")
    out = qa(**enc)
    start, end = int(out.start_logits.argmax()), int(out.end_logits.argmax())
    assert out.start_logits.shape == enc["input_ids"].shape == out.end_logits.shape
    span = tokenizer.decode(enc["input_ids"][0, start : end + 1], skip_special_tokens=True).strip()
    assert span in "what is the capital of france paris is the capital of france"  # "" when end < start
