"""User mistakes across verbs, one table: each exits 2 with one ``error:`` line last on stderr (any
line before it a ``note:``), no traceback, nothing on stdout, and every file that was there before
is byte-identical after (nothing written, nothing replaced).

The folders are tiny random models saved as the verbs find them (a classifier, a NER tagger, a
BERT pretraining model, a GPT-2 and a BART model), damaged one way each, and one 2-step pretraining
run to resume; each test copies only what its argv names (and the plain files), so the table stays
fast. A property test at the end feeds random bytes as corpora and prompts.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

import lmzoo
from lmzoo.cli import build_parser, main
from lmzoo.errors import UserError
from lmzoo.tokenizer import Tokenizer, train_tokenizer

WORDS = "the cat sat on a mat and dog ran far away alice smith went to paris".split()


def _tokenizer(folder: Path) -> Tokenizer:
    letters = sorted(set("".join(WORDS)))
    vocab = dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters),
                           *sorted(WORDS)])  # once each: "a" is a letter and a word
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = Tokenizer.load(folder)
    tok.save(folder)
    return tok


def _model(folder: Path, architecture: str, vocab_size: int, **overrides) -> None:
    torch.manual_seed(0)
    lmzoo.from_preset("bert-tiny", architecture=architecture, vocab_size=vocab_size, max_positions=64,
                      **overrides).save_pretrained(folder)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Every folder and file the table names, built once; each test works on its own copy."""
    root = tmp_path_factory.mktemp("bad-input")
    for name, architecture, labels in [("cls", "BertForSequenceClassification", ["neg", "pos"]),
                                       ("ner", "BertForTokenClassification", ["O", "B-PER", "I-PER"])]:
        tok = _tokenizer(root / name)
        _model(root / name, architecture, tok.vocab_size, id2label=dict(enumerate(labels)))
        task = {"task": "ner" if name == "ner" else "classify"}
        (root / name / "lmzoo_task.json").write_text(json.dumps(task))
    tok = _tokenizer(root / "mlm")
    _model(root / "mlm", "BertForPreTraining", tok.vocab_size)

    def damaged(name: str, source: str, change) -> None:
        shutil.copytree(root / source, root / name)
        change(root / name)

    damaged("BADJSON", "cls", lambda f: (f / "lmzoo_task.json").write_text("{not json"))
    damaged("BADTYPE", "cls", lambda f: (f / "lmzoo_task.json").write_text('{"task": "classify", "max_length": "x"}'))
    damaged("LISTJSON", "cls", lambda f: (f / "lmzoo_task.json").write_text("[1, 2]"))
    damaged("WRONGTASK", "cls", lambda f: (f / "lmzoo_task.json").write_text('{"task": "ner"}'))

    def gap(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config["id2label"], config["label2id"] = {"0": "neg", "2": "pos"}, {"neg": 0, "pos": 2}
        (folder / "config.json").write_text(json.dumps(config))

    damaged("GAP", "cls", gap)

    def no_heads(folder: Path) -> None:
        state = safetensors.torch.load_file(folder / "model.safetensors")
        safetensors.torch.save_file({k: v for k, v in state.items() if k.startswith("bert.")},
                                    folder / "model.safetensors", metadata={"format": "pt"})

    damaged("NOHEAD", "mlm", no_heads)

    def big_tokenizer(folder: Path) -> None:  # a tokenizer with ids past the model's embedding rows
        _model(folder, "BertForSequenceClassification", 40, id2label={0: "neg", 1: "pos"})

    damaged("BIGTOK", "cls", big_tokenizer)
    for name, preset in [("gpt", "gpt-tiny"), ("bart", "bart-tiny")]:
        tok = _tokenizer(root / name)
        torch.manual_seed(0)
        ids = {"bos_token_id": tok.cls_id, "eos_token_id": tok.sep_id, "pad_token_id": tok.pad_id}  # as pretrain
        if preset == "bart-tiny":
            ids["decoder_start_token_id"] = tok.sep_id
        lmzoo.from_preset(preset, vocab_size=tok.vocab_size, max_positions=64, **ids).save_pretrained(root / name)

    def config_field(**fields):
        def change(folder: Path) -> None:
            (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                            **fields}))
        return change

    damaged("CFGJSON", "mlm", lambda f: (f / "config.json").write_text("{nope"))
    damaged("CFGTYPE", "mlm", config_field(hidden_size="big"))
    damaged("CFGNULL", "mlm", config_field(vocab_size=None))
    damaged("CFGHUGE", "mlm", config_field(vocab_size=10**11))
    damaged("CFGBIG", "mlm", config_field(vocab_size=10**9))  # under the id limit, past any memory
    damaged("CFGLLAMA", "mlm", config_field(model_type="llama"))
    damaged("CFGHEADS", "mlm", config_field(num_attention_heads=3))
    damaged("CFGWIDTH", "mlm", config_field(hidden_size=64))  # the weights are 128 wide

    def truncated(folder: Path) -> None:
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:len(data) // 2])

    damaged("TRUNC", "mlm", truncated)

    def no_embeddings(folder: Path) -> None:
        state = safetensors.torch.load_file(folder / "model.safetensors")
        del state["bert.embeddings.word_embeddings.weight"]
        safetensors.torch.save_file(state, folder / "model.safetensors", metadata={"format": "pt"})

    damaged("NOTENSOR", "mlm", no_embeddings)
    damaged("NOWEIGHTS", "mlm", lambda f: (f / "model.safetensors").unlink())
    damaged("TOKJSON", "mlm", lambda f: (f / "tokenizer.json").write_text("{corrupt"))
    damaged("EOSPAST", "gpt", config_field(eos_token_id=50256))  # a GPT-2 id kept with a smaller vocabulary
    damaged("NOTOK", "gpt", lambda f: [p.unlink() for p in list(f.iterdir()) if "token" in p.name or "vocab" in p.name])
    (root / "train.csv").write_text("text,label\nthe cat sat,pos\na dog ran,neg\n")
    (root / "UNSEEN.csv").write_text("text,label\nthe cat sat,pos\na dog ran,maybe\n")
    (root / "NOLABEL.csv").write_text("text,label\nthe cat sat,pos\na dog ran,\n")
    (root / "HEADER.csv").write_text("text,label\n")
    (root / "NOTEXT.jsonl").write_text('{"text": "the cat", "label": "pos"}\n{"text": 3, "label": "neg"}\n')
    (root / "ORG.conll").write_text("alice\tB-PER\nsmith\tB-ORG\n")
    (root / "ONECOL.conll").write_text("alice\tB-PER\nsmith\n")
    (root / "BADROW.jsonl").write_text('{"source": "the cat", "target": "a dog"}\n{not json\n')
    (root / "NOTARGET.jsonl").write_text('{"source": "the cat"}\n')
    (root / "EMPTY.txt").write_text("")
    (root / "BLANK.txt").write_text("\n\n  \n")
    (root / "NUL.txt").write_text("the cat sat\x00 on the mat\n\na dog ran far\n")
    (root / "HUGE.txt").write_text("the cat sat on a mat " * 20_000)  # one line of 420 kB, no document break
    (root / "words.csv").write_text("words\nalice smith went to paris\n")
    (root / "corpus.txt").write_text("\n\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))))
    (root / "existing.txt").write_text("keep me\n")
    (root / "DIR").mkdir()
    (root / "BINARY.txt").write_bytes(b"\x10\x13\x00\x00{not text}\x00")
    (root / "LATIN.txt").write_bytes("café au lait\n".encode("latin-1"))
    with contextlib.chdir(root):
        assert main(["pretrain", *PRETRAIN, "--out", "RUN"]) == 0, "the run to resume"
    shutil.rmtree(root / "RUN" / "cache", ignore_errors=True)  # rebuilt on resume: not what the rows test
    return root


def copy_for(base: Path, work: Path, argv: list[str]) -> Path:
    """A copy of the fixture's plain files and of the folders ``argv`` names: every file there is
    snapshotted, so a write anywhere in ``work`` still fails the row (copying all twenty folders
    for each row would be most of the table's time)."""
    work.mkdir()
    named = {Path(a).parts[0] for a in argv if a and not a.startswith("-") and Path(a).parts}
    for entry in base.iterdir():
        if entry.is_file():
            shutil.copy2(entry, work / entry.name)
        elif entry.name in named or entry.name == "DIR":
            shutil.copytree(entry, work / entry.name)
    return work


def run_cli(argv: list[str]) -> int:
    """``main``'s exit status; argparse's usage errors exit through SystemExit, as the real command."""
    try:
        return main(list(argv))
    except SystemExit as e:
        return e.code


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def tokenizer_overwrite_flag() -> bool:
    """Whether ``lmzoo train-tokenizer`` has --overwrite yet (lmzoo/cli.py passes it to train_tokenizer)."""
    parser = build_parser(only="train-tokenizer")
    sub = next(a for a in parser._actions if a.dest == "verb")
    return any("--overwrite" in a.option_strings for a in sub.choices["train-tokenizer"]._actions)


needs_flag = pytest.mark.skipif(not tokenizer_overwrite_flag(),
                                reason="lmzoo/cli.py does not yet pass train-tokenizer --overwrite")
TRAIN = ["--no-progress", "--max-steps", "2"]
# a 2-step BERT MLM run on the fixture's corpus with its tokenizer: the `RUN` folder, and the rows that resume it
PRETRAIN = ["--preset", "bert-tiny", "--objective", "mlm", "--tokenizer", "mlm", "--data", "corpus.txt",
            "--seq-len", "16", "--batch-size", "2", "--eval-fraction", "0.2", *TRAIN]
NEW_RUN = ["pretrain", *PRETRAIN, "--out", "run"]
RESUME = ["pretrain", *PRETRAIN, "--out", "RUN", "--resume", "--max-steps", "4"]
SAMPLE = ["generate", "gpt", "the cat"]
TOKENIZE = ["--kind", "wordpiece", "--vocab-size", "60", "--out", "tok"]
FINETUNE = ["finetune", "--task", "classify", "--model", "mlm", "--train", "train.csv", "--out", "run", *TRAIN]
NOT_UTF8 = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")  # how Python hands a latin-1 argv to main

# (argv with folder / file names of the `base` fixture, a part of the error line)
CASES = [
    (["evaluate", "--model", "cls", "--data", "train.csv", "--out", "existing.txt"], "--out existing.txt is a file"),
    (["predict", "--model", "cls", "--input", "train.csv", "--output", "DIR"], "--output DIR is a folder"),
    (["predict", "--model", "cls", "--input", "train.csv", "--output", "nowhere/p.jsonl"], "does not exist"),
    (["predict", "--model", "BADJSON", "--input", "train.csv"], "lmzoo_task.json is not valid JSON"),
    (["evaluate", "--model", "BADJSON", "--data", "train.csv"], "lmzoo_task.json is not valid JSON"),
    (["predict", "--model", "BADTYPE", "--input", "train.csv"], "'max_length' must be an integer or null, got \"x\""),
    (["predict", "--model", "LISTJSON", "--input", "train.csv"], "must hold a JSON object of task options, not list"),
    (["predict", "--model", "WRONGTASK", "--input", "train.csv"], "task 'ner' does not fit the model's head"),
    (["predict", "--model", "GAP", "--input", "train.csv"], "id2label must number the labels 0 .. 1 without gaps"),
    (["evaluate", "--model", "GAP", "--data", "train.csv"], "got ids 0, 2"),
    (["predict", "--model", "ner", "--input", "words.csv"], "words.csv:2: no column 'tokens' (columns: words)"),
    (["fill-mask", "NOHEAD", "the [MASK] sat"], "no weights for its masked-LM head"),
    (["nsp", "NOHEAD", "the cat sat", "a dog ran"], "no weights for its next-sentence head"),
    (["text2text", "mlm", ""], "an input text is empty"),
    (["predict", "--model", "BIGTOK", "--input", "train.csv"], "tokens but the model embeds only 40"),
    pytest.param(["train-tokenizer", "corpus.txt", "--kind", "wordpiece", "--vocab-size", "60", "--out", "cls"],
                 "holds a model (config.json)", marks=needs_flag),
    # mistakes of our own, across verbs
    (["predict", "--model", "cls", "--input", "BINARY.txt"], "BINARY.txt is a binary file (NUL byte)"),
    (["predict", "--model", "cls", "--input", "LATIN.txt"], "LATIN.txt is not UTF-8 text"),
    (["predict", "--model", "cls", "--input", "DIR"], "input file DIR not found"),
    (["predict", "--model", "cls", "--input", "train.csv", "--batch-size", "0"], "--batch-size must be a positive"),
    (["evaluate", "--model", "cls", "--data", "train.csv", "--batch-size", "-1"], "--batch-size must be a positive"),
    (["predict", "--model", "ner", "--input", "train.csv", "--max-length", "1000"], "exceeds the model's 64 positions"),
    (["evaluate", "--model", "mlm", "--data", "train.csv"], "need a fine-tuned classifier"),
    (["train-tokenizer", "BINARY.txt", "--kind", "wordpiece", "--vocab-size", "60", "--out", "tok"], "binary file"),
    (["train-tokenizer", "DIR", "--kind", "wordpiece", "--vocab-size", "60", "--out", "tok"], "no text files found"),
    (["finetune", "--task", "classify", "--model", "mlm", "--train", "train.csv", "--out", "run", *TRAIN,
      "--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    (["finetune", "--task", "classify", "--model", "mlm", "--train", "train.csv", "--out", "run", *TRAIN,
      "--max-steps", "-5"], "max_steps must be a positive integer, got -5"),
    (["finetune", "--task", "classify", "--model", "mlm", "--train", "BINARY.txt", "--out", "run", *TRAIN],
     "expected a .csv, .tsv or .jsonl file"),
    (["finetune", "--task", "classify", "--model", "DIR", "--train", "train.csv", "--out", "run", *TRAIN],
     "no tokenizer in"),
    (["fill-mask", "mlm", "the [MASK] sat", "--top-k", "0"], "--top-k must be >= 1"),
    # wrong family / head for the verb
    (["generate", "mlm", "the cat"], "mlm holds a BertForPreTraining, which cannot generate text"),
    (["generate", "cls", "the cat"], "cls holds a BertForSequenceClassification, which cannot generate"),
    (["chat", "mlm"], "which cannot generate text"),
    (["complete", "mlm", "--file", "corpus.txt"], "which cannot generate text"),
    (["reconstruct", "gpt", "the <mask> sat"], "gpt is a GPT2LMHeadModel; seq2seq needs T5"),
    (["reconstruct", "mlm", "the [MASK] sat"], "mlm is a BertForPreTraining; seq2seq needs T5"),
    (["text2text", "gpt", "the cat"], "gpt is a GPT2LMHeadModel; seq2seq needs T5"),
    (["nsp", "gpt", "the cat", "a dog"], "GPT2LMHeadModel has no next-sentence head"),
    (["nsp", "cls", "the cat", "a dog"], "BertForSequenceClassification has no next-sentence head"),
    (["fill-mask", "gpt", "the [MASK] sat"], "GPT2LMHeadModel has no masked-LM head"),
    (["finetune", "--task", "seq2seq", "--model", "gpt", "--train", "NOTARGET.jsonl", "--out", "run", *TRAIN],
     "seq2seq needs T5"),
    (["chat", "gpt", "--max-new-tokens", "60"], "leaves no room for the conversation in a context of 64"),
    # numbers: zero, negative, non-numeric, inf, nan
    ([*SAMPLE, "--temperature", "-1"], "--temperature must be a finite number > 0, got -1.0"),
    ([*SAMPLE, "--temperature", "nan"], "--temperature must be a finite number > 0, got nan"),
    ([*SAMPLE, "--temperature", "inf"], "--temperature must be a finite number > 0, got inf"),
    ([*SAMPLE, "--temperature", "warm"], "argument --temperature: invalid float value: 'warm'"),
    ([*SAMPLE, "--top-p", "2"], "--top-p must be in (0, 1], got 2.0"),
    ([*SAMPLE, "--top-p", "nan"], "--top-p must be in (0, 1], got nan"),
    ([*SAMPLE, "--num-beams", "2", "--length-penalty", "nan"], "--length-penalty must be a finite number, got nan"),
    ([*SAMPLE, "--repetition-penalty", "0"], "--repetition-penalty must be a finite number > 0, got 0.0"),
    ([*SAMPLE, "--repetition-penalty", "inf"], "--repetition-penalty must be a finite number > 0, got inf"),
    ([*SAMPLE, "--max-new-tokens", "0"], "--max-new-tokens must be > 0, got 0"),
    (["complete", "gpt", "--file", "corpus.txt", "--max-new-tokens", "8", "--context", "0"],
     "--context must be in 1..64"),
    (["text2text", "bart", "the cat", "--num-beams", "0"], "--max-new-tokens and --num-beams must be >= 1"),
    (["eval", "gpt", "--data", "corpus.txt", "--context", "100000"], "--context must be in 1..64"),
    (["eval", "gpt", "--data", "corpus.txt", "--context", "nan"], "argument --context: invalid int value: 'nan'"),
    (["eval", "mlm", "--data", "corpus.txt", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ([*NEW_RUN, "--lr", "inf"], "lr must be a finite number, got inf"),
    ([*NEW_RUN, "--lr", "-1"], "lr must be > 0, got -1.0"),
    ([*NEW_RUN, "--clip-norm", "nan"], "clip_norm must be a finite number, got nan"),
    ([*NEW_RUN, "--weight-decay", "inf"], "weight_decay must be a finite number, got inf"),
    ([*NEW_RUN, "--epochs", "nan"], "epochs must be a positive finite number, got nan"),
    ([*NEW_RUN, "--seq-len", "0"], "--seq-len must be >= 8, got 0"),
    ([*NEW_RUN, "--eval-fraction", "1.5"], "--eval-fraction must be a number in (0, 1), got 1.5"),
    ([*NEW_RUN, "--mask-prob", "2"], "mask_prob must be in (0, 1), got 2.0"),
    ([*NEW_RUN, "--data-weights", "nan"], "--data-weights must be positive finite numbers, got nan"),
    ([*NEW_RUN, "--set", "dropout=nan"], "dropout must be a finite number, got nan"),
    ([*NEW_RUN, "--set", "vocab_size=100000000000"], "vocab_size 100000000000 is beyond the 4294967296 ids"),
    ([*NEW_RUN, "--objective", "clm"], "objective clm trains gpt2 presets, not bert"),
    ([*FINETUNE, "--lr", "inf"], "lr must be a finite number, got inf"),
    (["train-tokenizer", "corpus.txt", "--kind", "wordpiece", "--vocab-size", "0", "--out", "tok"],
     "vocab_size=0 is too small for the 5 special tokens"),
    (["train-tokenizer", "corpus.txt", *TOKENIZE, "--min-frequency", "-1"], "min_frequency must be >= 1, got -1"),
    (["compare", "--out", "c", "--flops", "nan"], "--flops must be a positive number, got nan"),
    # inputs: missing, empty, binary, not UTF-8, NUL bytes, one huge line, folders without text
    (["predict", "--model", "nothere", "--input", "train.csv"], "model folder nothere not found"),
    (["fill-mask", "mlm", "the cat sat"], "no mask in the text: write [MASK]"),
    ([*SAMPLE[:2], ""], "empty prompt: give some text to continue"),
    ([*SAMPLE[:2], NOT_UTF8], "is not UTF-8 (a byte 0xE9 at character 3)"),
    (["fill-mask", "mlm", NOT_UTF8 + " [MASK]"], "is not UTF-8 (a byte 0xE9 at character 3)"),
    (["nsp", "mlm", "the cat", ""], "both sentences must be non-empty"),
    (["reconstruct", "bart", ""], "the text has no gap to fill"),
    (["complete", "gpt", "--file", "BINARY.txt", "--max-new-tokens", "8"], "BINARY.txt is a binary file (NUL byte)"),
    (["complete", "gpt", "--file", "LATIN.txt", "--max-new-tokens", "8"], "cannot read LATIN.txt: 'utf-8' codec"),
    (["text2text", "bart", "--input", "BINARY.txt"], "BINARY.txt is a binary file (NUL byte)"),
    (["text2text", "bart", "--input", "EMPTY.txt"], "no input in EMPTY.txt"),
    (["text2text", "bart", "the cat", "--input", "train.csv"], "either on the command line or as --input FILE"),
    (["predict", "--model", "bart", "--input", "BLANK.txt"], "no input in BLANK.txt"),
    (["eval", "mlm", "--data", "EMPTY.txt"], "no text in EMPTY.txt: nothing to score"),
    (["eval", "mlm", "--data", "BINARY.txt"], "BINARY.txt:1: binary file (NUL byte)"),
    (["eval", "gpt", "--data", "NUL.txt"], "NUL.txt:1: binary file (NUL byte)"),
    (["eval", "mlm", "--data", "LATIN.txt"], "LATIN.txt: not valid UTF-8 text"),
    (["eval", "mlm", "--data", "DIR"], "no text files found for 'DIR'"),
    (["eval", "mlm", "--data", "corpus.txt", "--json", "DIR"], "--json DIR is a folder"),
    (["pretrain", *PRETRAIN[:6], "--data", "EMPTY.txt", *PRETRAIN[8:], "--out", "run"], "empty corpus: no tokens"),
    (["pretrain", *PRETRAIN[:6], "--data", "NUL.txt", *PRETRAIN[8:], "--out", "run"], "binary file (NUL byte)"),
    (["pretrain", *PRETRAIN[:6], "--data", "HUGE.txt", *PRETRAIN[8:], "--out", "run"],
     "cannot split a corpus of 1 document(s) into train and eval"),
    (["pretrain", *PRETRAIN[:6], "--data", "DIR", *PRETRAIN[8:], "--out", "run"], "no text files found for 'DIR'"),
    (["pretrain", *PRETRAIN[:4], "--tokenizer", "DIR", *PRETRAIN[6:], "--out", "run"], "no tokenizer in DIR"),
    (["pretrain", *PRETRAIN[2:], "--config", "existing.txt", "--out", "run"], "existing.txt is not valid JSON"),
    (["train-tokenizer", "EMPTY.txt", *TOKENIZE], "empty corpus: no text"),
    (["train-tokenizer", "NUL.txt", *TOKENIZE], "NUL.txt:1: binary file (NUL byte)"),
    (["train-tokenizer", "LATIN.txt", *TOKENIZE], "LATIN.txt: not valid UTF-8 text"),
    # damaged model folders: config.json, model.safetensors, tokenizer.json
    (["fill-mask", "CFGJSON", "the [MASK] sat"], "CFGJSON/config.json is not valid JSON"),
    (["fill-mask", "CFGTYPE", "the [MASK] sat"], 'd_model must be int, got "big"'),
    (["fill-mask", "CFGNULL", "the [MASK] sat"], "vocab_size must be int, got null"),
    (["fill-mask", "CFGHUGE", "the [MASK] sat"], "vocab_size 100000000000 is beyond the 4294967296 ids"),
    (["fill-mask", "CFGBIG", "the [MASK] sat"], "describes a model too big for this machine's memory"),
    (["fill-mask", "CFGLLAMA", "the [MASK] sat"], "unsupported model_type 'llama'"),
    (["fill-mask", "CFGHEADS", "the [MASK] sat"], "d_model 128 is not divisible by n_heads 3"),
    (["fill-mask", "CFGWIDTH", "the [MASK] sat"], "has shape (128,) but the config implies (64,)"),
    (["pretrain", *PRETRAIN[2:], "--model", "CFGTYPE", "--out", "run"], 'd_model must be int, got "big"'),
    (["fill-mask", "TRUNC", "the [MASK] sat"], "cannot read weights in TRUNC"),
    (["fill-mask", "NOTENSOR", "the [MASK] sat"], "1 weights missing"),
    (["fill-mask", "NOWEIGHTS", "the [MASK] sat"], "no weights in NOWEIGHTS"),
    (["fill-mask", "TOKJSON", "the [MASK] sat"], "cannot read the tokenizer in TOKJSON"),
    (["generate", "NOTOK", "the cat"], "no tokenizer in NOTOK"),
    (["generate", "EOSPAST", "the cat"], "EOSPAST/config.json: eos_token_id 50256 is outside the model's 56"),
    (["eval", "EOSPAST", "--data", "corpus.txt"], "eos_token_id 50256 is outside the model's 56 embedding rows"),
    (["eval", "NOTOK", "--data", "corpus.txt"], "no tokenizer in NOTOK"),
    (["serve", "DIR"], "DIR/config.json not found"),
    (["serve", "nothere"], "model folder nothere not found"),
    (["explain", "the cat", "--objective", "nope"], "unknown objective 'nope'"),
    (["explain", "the cat", "--objective", "mlm", "--mask-prob", "nan"], "mask_prob must be in (0, 1), got nan"),
    (["explain", "the cat", "--objective", "mlm", "--tokenizer", "DIR"], "no tokenizer in DIR"),
    (["compare", "--out", "c", "--approaches", "nope"], "unknown approach nope"),
    (["demo", "--out", "d", "--only", "nope"], "unknown demo section(s) nope"),
    # task files: bad rows, unseen labels
    (["evaluate", "--model", "cls", "--data", "UNSEEN.csv"], "label 'maybe' was not seen in the training data"),
    (["evaluate", "--model", "cls", "--data", "NOLABEL.csv"], "NOLABEL.csv:3: empty label"),
    (["evaluate", "--model", "cls", "--data", "HEADER.csv"], "HEADER.csv holds no examples"),
    (["evaluate", "--model", "cls", "--data", "NOTEXT.jsonl"], "NOTEXT.jsonl:2: empty or non-text 'text'"),
    (["evaluate", "--model", "ner", "--data", "ORG.conll"], "label 'B-ORG' was not seen in the training data"),
    (["evaluate", "--model", "ner", "--data", "ONECOL.conll"], "ONECOL.conll:2: expected 'token<TAB>tag'"),
    (["evaluate", "--model", "bart", "--data", "BADROW.jsonl"], "BADROW.jsonl:2: not valid JSON"),
    (["evaluate", "--model", "bart", "--data", "NOTARGET.jsonl"], "NOTARGET.jsonl:1: no column 'target'"),
    (["evaluate", "--model", "bart", "--data", "train.csv"], "train.csv:2: no column 'source'"),
    ([*FINETUNE[:6], "NOLABEL.csv", *FINETUNE[7:]], "NOLABEL.csv:3: empty label"),
    # --out naming a file; resuming with other options
    (["pretrain", *PRETRAIN, "--out", "existing.txt"], "existing.txt is a file; the output of a run is a folder"),
    (["train-tokenizer", "corpus.txt", *TOKENIZE[:-1], "existing.txt"], "existing.txt is a file"),
    (["compare", "--out", "existing.txt"], "--out existing.txt is a file"),
    (["demo", "--out", "existing.txt"], "--out existing.txt is a file"),
    (["text2text", "bart", "the cat", "--output", "DIR"], "cannot write DIR"),
    ([*RESUME, "--seq-len", "32"], "--seq-len 32 contradicts the checkpoint RUN/checkpoints/step-00000002 (16)"),
    ([*RESUME, "--batch-size", "4"], "--batch-size 4 contradicts the checkpoint"),
    ([*RESUME, "--preset", "bert-mini"], "--preset bert-mini contradicts the checkpoint"),
    ([*RESUME, "--objective", "mlm+nsp"], "--objective mlm+nsp contradicts the checkpoint"),
    ([*RESUME, "--mask-prob", "0.3"], "--mask-prob 0.3 contradicts the checkpoint RUN/checkpoints/step-00000002 "
                                      "(0.15)"),
    # the options a resume could drop or add: a run's model overrides, its data and how it is split
    ([*RESUME, "--set", "dropout=0.0"], "--set dropout=0.0 contradicts the checkpoint RUN/checkpoints/step-00000002 "
                                        "(none)"),
    ([*RESUME, "--data", "train.csv"], "bytes) train.csv ("),
    ([*RESUME, "--eval-fraction", "0.5"], "--eval-fraction 0.5 contradicts the checkpoint"),
    ([*RESUME, "--document-split", "file"], "--document-split file contradicts the checkpoint"),
    ([*RESUME, "--data-weights", "1"], "--data-weights 1.0 contradicts the checkpoint"),
    (["pretrain", *PRETRAIN, "--out", "RUN"], "RUN already holds a run; pass --resume to continue it or --overwrite"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[getattr(c, "values", c)[1] for c in CASES])
def test_mistake_is_one_error_line_and_changes_nothing(base, tmp_path, capsys, monkeypatch, argv, message):
    work = copy_for(base, tmp_path / "w", argv)
    monkeypatch.chdir(work)  # relative names, as a user types them
    before = snapshot(work)
    code = run_cli(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2 and out == "", (code, out, err)
    assert lines and lines[-1].startswith("error: ") and message in lines[-1], err
    assert all(line.startswith("note: ") for line in lines[:-1]) and "Traceback" not in err, err
    assert snapshot(work) == before


def test_train_tokenizer_refuses_a_run_folder_without_overwrite(base, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(base, work)
    corpus = [str(work / "corpus.txt")]
    before = snapshot(work / "cls")
    with pytest.raises(UserError, match=r"holds a model \(config.json\).*--overwrite"):
        train_tokenizer(corpus, kind="wordpiece", vocab_size=60, out_dir=str(work / "cls"), overwrite=False)
    only_tokenizer = work / "tok"
    Tokenizer.load(work / "cls").save(only_tokenizer)
    with pytest.raises(UserError, match=r"already holds a tokenizer \(tokenizer.json\)"):
        train_tokenizer(corpus, kind="wordpiece", vocab_size=60, out_dir=str(only_tokenizer), overwrite=False)
    with pytest.raises(UserError, match="is a file"):
        train_tokenizer(corpus, kind="wordpiece", vocab_size=60, out_dir=str(work / "existing.txt"), overwrite=False)
    assert snapshot(work / "cls") == before
    tok = train_tokenizer(corpus, kind="wordpiece", vocab_size=60, out_dir=str(work / "cls"), overwrite=True)
    assert Tokenizer.load(work / "cls").vocab_size == tok.vocab_size != Tokenizer.load(only_tokenizer).vocab_size
    train_tokenizer(corpus, kind="wordpiece", vocab_size=60, out_dir=str(work / "fresh"), overwrite=False)
    assert (work / "fresh" / "tokenizer.json").is_file()


@pytest.mark.parametrize("name, content", [
    ("in.csv", "tokens\nalice smith went to paris\nthe cat sat\n"),
    ("in.csv", 'tokens\n"[""alice"", ""smith"", ""went"", ""to"", ""paris""]"\n"[""the"", ""cat"", ""sat""]"\n'),
    ("in.tsv", "id\ttokens\n1\talice smith went to paris\n2\tthe cat sat\n"),
    ("in.tsv", "alice\nsmith\nwent\nto\nparis\n\nthe\ncat\nsat\n"),  # CoNLL in a .tsv, no header
])
def test_ner_reads_a_table_with_a_header_as_rows_of_tokens(base, tmp_path, capsys, name, content):
    (tmp_path / name).write_text(content)
    assert main(["predict", "--model", str(base / "ner"), "--input", str(tmp_path / name)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["tokens"] for r in rows] == [["alice", "smith", "went", "to", "paris"], ["the", "cat", "sat"]]
    assert all(len(r["tags"]) == len(r["tokens"]) for r in rows)


def test_a_diverging_resume_stops_at_the_step_and_keeps_the_last_good_checkpoint(base, tmp_path, capsys,
                                                                                  monkeypatch):
    work = copy_for(base, tmp_path / "w", ["RUN", "mlm"])
    monkeypatch.chdir(work)
    kept = {name: snapshot(work / "RUN" / name) for name in ("checkpoints",)}
    model = (work / "RUN" / "model.safetensors").read_bytes()
    code = run_cli([*RESUME[:-1], "6", "--lr", "1e30", "--clip-norm", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert re.fullmatch(r"error: the loss became non-finite at step [3-6]; stopped without saving: the last good "
                        r"checkpoint is RUN/checkpoints/step-00000002 .*", err.splitlines()[-1]), err
    assert {name: snapshot(work / "RUN" / name) for name in kept} == kept
    assert (work / "RUN" / "model.safetensors").read_bytes() == model


# ---- random bytes: a corpus, a prompt ---------------------------------------------------------------

try:  # the property tests need hypothesis (the test extra); the table above does not
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:
    st = None


def assert_clean(code: int, err: str) -> None:
    """Exit 0, or exit 2 with one error line last (notes before it); never a traceback."""
    lines = err.splitlines()
    assert "Traceback" not in err, err
    assert code == 0 or (code == 2 and lines and lines[-1].startswith("error: ")
                         and all(line.startswith("note: ") for line in lines[:-1])), (code, err)


if st is None:
    def test_random_bytes_need_hypothesis():
        pytest.skip("hypothesis is not installed: pip install 'lmzoo[test]'")
else:
    # raw bytes (mostly not UTF-8) or UTF-8 text with blank lines, NULs and odd characters
    CONTENT = st.one_of(st.binary(max_size=600),
                        st.text(st.characters(codec="utf-8"), max_size=300).map(lambda t: t.encode("utf-8")),
                        st.lists(st.sampled_from([*WORDS, "\n", "\n\n", "\n\n", "\x00", "é", "\t"]), min_size=10,
                                 max_size=200).map(lambda w: " ".join(w).encode()))
    PROPERTY = settings(max_examples=15, deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

    @PROPERTY
    @given(content=CONTENT, verb=st.sampled_from(["pretrain", "train-tokenizer", "eval"]))
    def test_random_bytes_as_a_corpus(base, capsys, content, verb):
        with tempfile.TemporaryDirectory() as folder:
            corpus = Path(folder) / "corpus.txt"
            corpus.write_bytes(content)
            argv = {"pretrain": ["pretrain", *PRETRAIN[:6], "--data", str(corpus), *PRETRAIN[8:14],
                                 "--eval-fraction", "0.5", "--no-progress", "--max-steps", "1",
                                 "--tokenizer", str(base / "mlm"), "--out", f"{folder}/run"],
                    "train-tokenizer": ["train-tokenizer", str(corpus), *TOKENIZE[:-1], f"{folder}/tok"],
                    "eval": ["eval", str(base / "gpt"), "--data", str(corpus), "--no-progress"]}[verb]
            code = run_cli(argv)
            assert_clean(code, capsys.readouterr().err)

    @PROPERTY
    @given(content=CONTENT, verb=st.sampled_from(["generate", "fill-mask"]))
    def test_random_bytes_as_a_prompt(base, capsys, content, verb):
        prompt = content.replace(b"\0", b"").decode("utf-8", "surrogateescape")  # argv: no NUL, bytes as surrogates
        argv = {"generate": ["generate", str(base / "gpt"), prompt, "--max-new-tokens", "2"],
                "fill-mask": ["fill-mask", str(base / "mlm"), prompt + " [MASK]"]}[verb]
        code = run_cli(argv)
        assert_clean(code, capsys.readouterr().err)
