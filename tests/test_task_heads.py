"""The task heads of GPT-2 (sequence and token classification) and XLNet (token classification):
parity of logits and loss with transformers through the production loader, the HF folder round trip
both ways, the last-token rule of GPT-2 (right / left padding, with or without a pad id), XLNet's
summary on right-padded rows, registration in the family specs, and `lmzoo finetune` learning
with each new head."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import lmzoo
from conftest import LABEL2ID, LABELS, assert_close, hf_model, padded_batch, tiny_config
from lmzoo.cli import main
from lmzoo.models import ARCHITECTURES, family_spec
from lmzoo.models.gpt2 import GPT2ForSequenceClassification, GPT2ForTokenClassification, GPT2LMHeadModel
from lmzoo.models.xlnet import XLNetForSequenceClassification, XLNetForTokenClassification, XLNetLMHeadModel
from lmzoo.presets import preset_config

LABEL_MAPS = {"id2label": LABELS, "label2id": LABEL2ID}
GPT2_PAD = 100  # the tiny GPT-2's <|endoftext|>; the random ids below are < 100, so no real token equals it
# XLNet has no embedding norm: at the default init (0.02) a wrongly mapped attention weight hides under 1e-5
XLNET = {"initializer_range": 0.1}


def token_labels(mask: torch.Tensor) -> torch.Tensor:
    """Per-token labels in [0, 3) with -100 at padding and at two real positions."""
    labels = torch.randint(0, 3, mask.shape, generator=torch.Generator().manual_seed(2))
    labels[0, 1] = labels[1, 3] = -100
    return labels.masked_fill(mask == 0, -100)


def gpt2_batches(arch: str, problem: str) -> list[dict]:
    right, right_mask = padded_batch((9, 6, 3), high=100, low=0, pad_id=GPT2_PAD, seed=1)
    left, left_mask = padded_batch((9, 6, 3), high=100, low=0, pad_id=GPT2_PAD, seed=1, left=True)
    positions = (left_mask.cumsum(1) - 1).clamp(min=0)
    inputs = [{"input_ids": right, "attention_mask": right_mask},
              {"input_ids": right},  # no mask: the last token that is not pad_token_id, as HF
              {"input_ids": left, "attention_mask": left_mask, "position_ids": positions}]
    if arch == "GPT2ForTokenClassification":
        return inputs[:1] + [{**inputs[0], "labels": token_labels(right_mask)}]
    labels = {"single_label_classification": torch.tensor([2, 0, 1]),
              "multi_label_classification": torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 1]]),
              "regression": torch.tensor([0.5, -1.0, 2.0])}[problem]
    return inputs + [{**b, "labels": labels} for b in inputs]


def xlnet_batches() -> list[dict]:
    ids, mask = padded_batch((11, 8, 5), high=101, low=6, pad_id=0, seed=3)  # right-padded, as lmzoo's collator
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return [batch, {**batch, "labels": token_labels(mask)}]


CASES = [
    pytest.param("gpt2", "GPT2ForSequenceClassification", "single_label_classification", id="gpt2-seq-single"),
    pytest.param("gpt2", "GPT2ForSequenceClassification", "multi_label_classification", id="gpt2-seq-multi"),
    pytest.param("gpt2", "GPT2ForSequenceClassification", "regression", id="gpt2-seq-regression"),
    pytest.param("gpt2", "GPT2ForTokenClassification", "single_label_classification", id="gpt2-token"),
    pytest.param("xlnet", "XLNetForTokenClassification", "single_label_classification", id="xlnet-token"),
]


def hf_outputs(model, batch: dict):
    extra = {"use_mems": False} if isinstance(model, transformers.XLNetPreTrainedModel) else {}
    with torch.no_grad():
        return model(**batch, **extra)


def compare(ours, hf, batches: list[dict]) -> None:
    """Logits (per-token heads: at real tokens; GPT-2's padding sees a convention) and loss."""
    for batch in batches:
        with torch.no_grad():
            out = ours(**batch)
        ref = hf_outputs(hf, batch)
        mask = batch.get("attention_mask") if out.logits.dim() == 3 else None
        assert_close(out.logits, ref.logits, mask)
        assert (out.loss is None) == ("labels" not in batch)
        if out.loss is not None:
            assert_close(out.loss, ref.loss)


@pytest.mark.parametrize("family,arch,problem", CASES)
def test_parity_and_round_trip(tmp_path, capsys, family, arch, problem):
    n = 1 if problem == "regression" else 3
    labels = LABELS if n == 3 else {0: "score"}
    overrides = {"id2label": labels, "label2id": {v: k for k, v in labels.items()}, "problem_type": problem}
    overrides.update({"pad_token_id": GPT2_PAD} if family == "gpt2" else XLNET)
    hf_cls = getattr(transformers, arch)
    hf = hf_model(hf_cls, tiny_config(family, **overrides), tmp_path / "hf")
    capsys.readouterr()
    ours = lmzoo.from_pretrained(tmp_path / "hf")
    assert capsys.readouterr().err == ""  # no missing or ignored weights
    assert type(ours).__name__ == arch and ours.config.id2label == labels and ours.config.problem_type == problem
    batches = gpt2_batches(arch, problem) if family == "gpt2" else xlnet_batches()
    compare(ours, hf, batches)

    # lmzoo → HF folder → transformers: nothing missing or unexpected, same outputs; and back into lmzoo
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == [arch]
    back, info = hf_cls.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert (back.config.id2label, back.config.problem_type) == (hf.config.id2label, hf.config.problem_type)
    compare(ours, back.eval(), batches)
    again = lmzoo.from_pretrained(tmp_path / "ours")
    assert again.config == ours.config
    for name, p in again.state_dict().items():
        assert torch.equal(p, ours.state_dict()[name]), name


def test_gpt2_heads_start_from_a_pretrained_body(tmp_path, capsys):
    """A GPT2LMHeadModel folder (what `lmzoo pretrain` writes) gives the heads their body; the head
    starts random with a note. The classifier's logits are its score over the LM's hidden state."""
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=101, d_model=32, n_heads=4, d_ff=37, max_positions=16,
                                       id2label=LABELS)).eval()
    lm.save_pretrained(tmp_path)
    ids, mask = padded_batch((7, 4), high=100, low=0, pad_id=0, seed=1)
    for cls, head in ((GPT2ForSequenceClassification, "score"), (GPT2ForTokenClassification, "classifier")):
        model = cls.from_pretrained(tmp_path)
        assert head in capsys.readouterr().err
        with torch.no_grad():
            hidden = lm(input_ids=ids, attention_mask=mask).last_hidden_state
            out = model(input_ids=ids, attention_mask=mask)
        assert_close(out.last_hidden_state, hidden)
        if cls is GPT2ForSequenceClassification:
            assert_close(out.logits, model.score(hidden[torch.arange(2), torch.tensor([6, 3])]))


def test_gpt2_without_pad_id_uses_the_attention_mask(tmp_path):
    """pad_token_id None (GPT-2's own config): transformers refuses batches; lmzoo reads the last
    real token from the attention mask, which is what HF gives once a pad id is set (right padding),
    and the last position without a mask (unpadded rows: HF's batch-of-one rule)."""
    hf = hf_model(transformers.GPT2ForSequenceClassification, tiny_config("gpt2", pad_token_id=GPT2_PAD, **LABEL_MAPS),
                  tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    ours.config = ours.config.replace(pad_token_id=None)
    ids, mask = padded_batch((9, 6, 3), high=100, low=0, pad_id=7, seed=4)  # padded with a real token id
    with torch.no_grad():
        ref = hf(input_ids=ids.masked_fill(mask == 0, GPT2_PAD), attention_mask=mask).logits
        out = ours(input_ids=ids, attention_mask=mask).logits
        assert_close(out, ref)
        full = ids[:, :3]
        assert_close(ours(input_ids=full).logits, torch.cat([hf(input_ids=row[None]).logits for row in full]))
    hf.config.pad_token_id = None
    with pytest.raises(ValueError):  # what lmzoo does instead
        hf(input_ids=full)


def test_xlnet_summary_reads_the_last_real_token_of_right_padded_rows(tmp_path):
    """HF's XLNet reads the last position, which its tokenizer's left padding makes the last real
    token. lmzoo pads on the right: the classifier reads the last real token there, so a right-padded
    row gets HF's logits of the same row left-padded (relative attention: the side does not matter)."""
    hf = hf_model(transformers.XLNetForSequenceClassification, tiny_config("xlnet", **XLNET, **LABEL_MAPS), tmp_path)
    ours = lmzoo.from_pretrained(tmp_path)
    assert type(ours) is XLNetForSequenceClassification
    lengths = (11, 8, 5)
    right, right_mask = padded_batch(lengths, high=101, low=6, pad_id=0, seed=3)
    left = torch.zeros_like(right)
    for row, n in enumerate(lengths):
        left[row, right.shape[1] - n:] = right[row, :n]
    with torch.no_grad():
        ref = hf(input_ids=left, attention_mask=right_mask.flip(1), use_mems=False).logits
        assert_close(ours(input_ids=right, attention_mask=right_mask).logits, ref)
        assert_close(ours(input_ids=left, attention_mask=right_mask.flip(1)).logits, ref)


def test_heads_are_registered():
    assert family_spec("gpt2").head("sequence_classification") is GPT2ForSequenceClassification
    assert family_spec("gpt2").head("token_classification") is GPT2ForTokenClassification
    assert family_spec("xlnet").head("token_classification") is XLNetForTokenClassification
    for cls in (GPT2ForSequenceClassification, GPT2ForTokenClassification, XLNetForTokenClassification):
        assert ARCHITECTURES[cls.hf_architecture] is cls
    # the pretraining classes stay the defaults (a config.json without architectures)
    assert family_spec("gpt2").default_architecture is GPT2LMHeadModel
    assert family_spec("xlnet").default_architecture is XLNetLMHeadModel


# --- fine-tuning through the CLI ------------------------------------------------------------------

WORDS = "alpha beta gamma delta eps zeta eta theta iota kappa lam mu".split()
UP, DOWN = "sunny bright", "rainy gloomy"
PLACES = "oslo quito nairobi".split()  # first letters no other word has: a causal tagger sees only that
FLAGS = ["--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "3", "--no-progress", "--log-every", "100",
         "--max-length", "16"]


def _tiny_folder(tmp_path, family: str):
    """A random tiny model of the family (d_model 32, 2 layers) and a tokenizer of the family spec's
    kind and template. GPT-2's byte-level BPE is trained as `lmzoo pretrain` does (its vocabulary
    fits every word whole); XLNet's Unigram is written with a fixed vocabulary of whole words, since
    the Unigram trainer of `tokenizers` keeps little more than characters on so small a corpus."""
    import random

    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    from lmzoo.tokenizer import Tokenizer, train_tokenizer

    spec = family_spec(family)
    vocab = WORDS + UP.split() + DOWN.split() + PLACES
    folder = tmp_path / "model"
    if family == "gpt2":
        rng = random.Random(0)
        (tmp_path / "corpus.txt").write_text("\n\n".join(" ".join(rng.choices(vocab, k=10)) for _ in range(200)))
        tok = train_tokenizer([str(tmp_path / "corpus.txt")], kind=spec.tokenizer_kind, template=spec.template,
                              vocab_size=400, out_dir=str(folder))
    else:
        letters = sorted(set("".join(vocab)))
        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((f"▁{w}", -1.0) for w in vocab), ("▁", -5.0),
                  *((c, -5.0) for c in letters)]
        backend = tokenizers.Tokenizer(models.Unigram(pieces, unk_id=2))
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
        backend.decoder = decoders.Metaspace()
        folder.mkdir()
        backend.save(str(folder / "tokenizer.json"))
        tok = Tokenizer.load(folder)
        tok.save(folder)
    assert tok.template == spec.template
    preset = {"gpt2": "gpt-tiny", "xlnet": "xlnet-tiny"}[family]
    config = preset_config(preset, vocab_size=tok.vocab_size, d_model=32, n_heads=2, d_ff=64, max_positions=32,
                           pad_token_id=tok.pad_id, eos_token_id=tok.eos_id,
                           bos_token_id=tok.bos_id if tok.bos_id is not None else tok.eos_id)  # GPT-2: bos = eos
    torch.manual_seed(0)
    spec.default_architecture(config).save_pretrained(folder)
    return folder


def _sentiment(n: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(n):
        label = rng.choice(["up", "down"])
        words = rng.sample(WORDS, 3) + [rng.choice((UP if label == "up" else DOWN).split())]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{label}")
    return "\n".join(lines) + "\n"


def _tagged(n: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words = rng.sample(WORDS, 3) + [rng.choice(PLACES)]
        rng.shuffle(words)
        sentences.append("".join(f"{w}\t{'B-LOC' if w in PLACES else 'O'}\n" for w in words))
    return "\n".join(sentences)


def _words_only(conll: str) -> str:
    """Tagged sentences as plain text, one sentence a line (predict's input)."""
    return "\n".join(" ".join(line.split("\t")[0] for line in block.splitlines())
                     for block in conll.strip().split("\n\n")) + "\n"


@pytest.mark.parametrize("family,task,arch", [
    ("gpt2", "classify", "GPT2ForSequenceClassification"),
    ("gpt2", "ner", "GPT2ForTokenClassification"),
    ("xlnet", "ner", "XLNetForTokenClassification"),
])
def test_finetune_learns_with_the_new_heads(tmp_path, capsys, family, task, arch):
    """`lmzoo finetune` on a trivially learnable task (the label is one word's; the entities are a
    closed set of places) beats chance by far on held-out data; evaluate and predict read the result."""
    folder = _tiny_folder(tmp_path, family)
    suffix = "csv" if task == "classify" else "conll"
    write = _sentiment if task == "classify" else _tagged
    (tmp_path / f"train.{suffix}").write_text(write(160, 1))
    (tmp_path / f"dev.{suffix}").write_text(write(40, 2))
    out = tmp_path / "run"
    assert main(["finetune", "--task", task, "--model", str(folder), "--train", str(tmp_path / f"train.{suffix}"),
                 "--eval", str(tmp_path / f"dev.{suffix}"), "--out", str(out), "--max-steps", "30", *FLAGS]) == 0
    best = json.loads((out / "best" / "eval_metrics.json").read_text())
    assert json.loads((out / "best" / "config.json").read_text())["architectures"] == [arch]
    # chance: accuracy 0.5 (two balanced labels); entity F1 about 0.25 (one place in four words, guessed)
    assert best["accuracy" if task == "classify" else "f1"] >= 0.9, best
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "best"), "--data", str(tmp_path / f"dev.{suffix}")]) == 0
    # predict reads the kept model: its answers on the dev file agree with the gold labels as evaluation says
    (tmp_path / "in.txt").write_text("\n".join(line.split(",")[0] for line in write(40, 2).splitlines()[1:])
                                     if task == "classify" else _words_only(write(40, 2)))
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "best"), "--input", str(tmp_path / "in.txt")]) == 0
    preds = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    if task == "classify":
        gold = [line.split(",")[1] for line in write(40, 2).splitlines()[1:]]
        agree = sum(p["label"] == g for p, g in zip(preds, gold)) / len(gold)
        assert len(preds) == 40 and abs(agree - best["accuracy"]) < 1e-9, (agree, best)
    else:
        gold = [["B-LOC" if w in PLACES else "O" for w in p["tokens"]] for p in preds]
        assert len(preds) == 40 and sum(p["tags"] == g for p, g in zip(preds, gold)) >= 32
