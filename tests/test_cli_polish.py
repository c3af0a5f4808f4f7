"""The CLI's surface: --version, user-facing help with defaults, no abbreviations, inputs given
positionally or as flags, a torch-free --help, chat's empty-reply note, and seq2seq folders in
evaluate / predict / text2text --input."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from importlib.metadata import version

import pytest
import torch

from lmzoo.cli import VERBS, main, parse_args, train_config_from_args
from lmzoo.errors import UserError


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def exits(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a command argparse ends with SystemExit (--help, usage errors)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return e.value.code, captured.out, captured.err


# --- version, help, abbreviations -------------------------------------------------------------


def test_version_and_user_facing_help(capsys):
    code, out, _ = exits(capsys, "--version")
    assert code == 0 and out == f"lmzoo {version('lmzoo')}\n"
    code, out, _ = exits(capsys, "--help")
    assert code == 0
    assert "lmzoo trains the classic transformer language models" in out
    assert "a dict of verbs" not in out  # the module docstring is for developers
    assert all(name in out for name in VERBS)


def test_every_help_shows_defaults_once_and_no_noise(capsys):
    for name in VERBS:
        code, out, _ = exits(capsys, name, "--help")
        assert code == 0, name
        for noise in ("(default: None)", "(default: False)", "(default: True)", "(default: [])"):
            assert noise not in out, (name, noise)
    _, out, _ = exits(capsys, "pretrain", "--help")
    flat = " ".join(out.split())  # help lines wrap
    assert "optimizer steps (default: 1000)" in flat and "(default 1000)" not in flat
    assert "tokens per example (default: 128)" in flat
    assert "chosen for prediction (default: 0.15)" in flat and "(default 0.15)" not in flat  # from the dataclass
    assert "--weight-decay WEIGHT_DECAY default: 0.01" in flat  # a flag without help gets its default too
    assert flat.count("default: the family's own") == 1  # a default the help names is not repeated


def test_no_abbreviated_flags(capsys):
    code, _, err = exits(capsys, "finetune", "--task", "classify", "--model", "m", "--train", "t.csv", "--out", "o",
                         "--max-step", "3")
    assert code == 2 and "unrecognized arguments: --max-step" in err and err.count("\n") == 1
    code, _, err = exits(capsys, "--vers")
    assert code == 2 and err.startswith("error: ")


# --- inputs positionally or as a flag ---------------------------------------------------------


@pytest.mark.parametrize("argv,expected", [
    (["eval", "M", "--data", "a"], {"model": "M", "data": ["a"]}),
    (["eval", "--model", "M", "--data", "a", "b"], {"model": "M", "data": ["a", "b"]}),
    (["evaluate", "R/best", "--data", "f.csv"], {"model": "R/best", "data": "f.csv"}),
    (["evaluate", "--model", "R/best", "--data", "f.csv"], {"model": "R/best", "data": "f.csv"}),
    (["predict", "R/best", "--input", "x.txt"], {"model": "R/best"}),
    (["finetune", "M", "--task", "classify", "--train", "t.csv", "--out", "o"], {"model": "M"}),
    (["generate", "M", "hello"], {"model": "M", "prompt": "hello"}),
    (["generate", "--model", "M", "hello"], {"model": "M", "prompt": "hello"}),
    (["generate", "M", "--seed", "1", "hello"], {"model": "M", "prompt": "hello"}),  # flags between positionals
    (["nsp", "--model", "M", "a", "b"], {"model": "M", "first": "a", "second": "b"}),
    (["text2text", "--model", "M", "a b", "c"], {"model": "M", "text": ["a b", "c"]}),
    (["text2text", "M", "a b", "c"], {"model": "M", "text": ["a b", "c"]}),
    (["reconstruct", "--model", "M", "a <mask>"], {"model": "M", "text": ["a <mask>"]}),
    (["chat", "--model", "M"], {"model": "M"}),
    (["train-tokenizer", "a", "b", "--kind", "bpe", "--out", "o"], {"data": ["a", "b"]}),
    (["train-tokenizer", "--data", "a", "b", "--kind", "bpe", "--out", "o"], {"data": ["a", "b"]}),
    (["train-tokenizer", "--kind", "bpe", "--out", "o"], {"data": None}),
    (["generate", "M", "hello", "--model", "M"], {"model": "M", "prompt": "hello"}),  # the same value twice: fine
    # a list flag given twice keeps both (argparse's default keeps the last: a source dropped silently)
    (["pretrain", "--preset", "bert-tiny", "--out", "o", "--data", "a", "--data", "b", "c", "--set", "n_layers=1",
      "--set", "dropout=0.0", "--data-weights", "1", "--data-weights", "2", "3"],
     {"data": ["a", "b", "c"], "set": ["n_layers=1", "dropout=0.0"], "data_weights": [1.0, 2.0, 3.0]}),
    (["train-tokenizer", "--data", "a", "--data", "b", "--kind", "bpe", "--out", "o"], {"data": ["a", "b"]}),
    (["eval", "M", "--data", "a", "--data", "b"], {"data": ["a", "b"]}),
])
def test_inputs_positionally_or_as_flags(argv, expected):
    args = parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected
    assert not any(k.startswith(("_model_", "_data_")) for k in vars(args))


@pytest.mark.parametrize("argv,message", [
    (["generate", "M", "hello", "--model", "N"], "the model is given twice, as M and as --model N"),
    (["evaluate", "A", "--model", "B", "--data", "f.csv"], "the model is given twice"),
    (["train-tokenizer", "a", "--data", "b", "--kind", "bpe", "--out", "o"], "the data is given twice"),
    (["evaluate", "--data", "f.csv"], "give the model: evaluate MODEL or evaluate --model MODEL"),
    (["eval", "--data", "f"], "give the model"),
])
def test_conflicting_or_missing_inputs_are_one_line(capsys, argv, message):
    with pytest.raises(UserError, match=message):
        parse_args(argv)
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1


# --- startup ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,code", [(["--help"], 0), (["finetune", "--bogus"], 2), (["--version"], 0)])
def test_help_and_usage_errors_do_not_import_torch(argv, code):
    script = ("import sys\nfrom lmzoo.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
              "    code = e.code\nsys.stderr.write(f'\\n{code} torch={\"torch\" in sys.modules}\\n')\n")
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.stderr.splitlines()[-1] == f"{code} torch=False", done.stderr


# --- training flags ---------------------------------------------------------------------------


def test_epochs_flag_reaches_the_train_config():

    base = ["finetune", "--task", "classify", "--model", "m", "--train", "t.csv", "--out", "o"]
    assert train_config_from_args(parse_args(base)).max_steps == 1000
    args = parse_args(base + ["--epochs", "2.5"])
    assert train_config_from_args(args).epochs == 2.5
    assert train_config_from_args(parse_args(base)).epochs is None


# --- chat on a model that never learned speaker turns ------------------------------------------


def test_chat_notes_once_when_the_model_writes_no_reply(tmp_path, capsys, monkeypatch):
    """A GPT whose every next token is end-of-text (as one never trained on speaker turns may answer
    'JULIET\\n' with nothing): each reply is empty, and one stderr note says what chat expects."""
    from lmzoo.models.gpt2 import GPT2LMHeadModel
    from lmzoo.presets import preset_config
    from lmzoo.tokenizer import train_tokenizer

    (tmp_path / "c.txt").write_text("\n\n".join("the quick brown fox jumps over the lazy dog" for _ in range(20)))
    tok = train_tokenizer([str(tmp_path / "c.txt")], kind="bpe", vocab_size=280, out_dir=str(tmp_path))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(preset_config("gpt-tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id,
                                          bos_token_id=tok.eos_id, max_positions=64, n_layers=1))
    with torch.no_grad():  # final norm → a constant vector: the (tied) logits peak at the longest embedding
        emb = model.transformer.embed.tokens.weight
        emb[tok.eos_id] *= 10
        model.transformer.norm.weight.zero_()
        model.transformer.norm.bias.copy_(emb[tok.eos_id])
    model.save_pretrained(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello there\nanyone?\n"))
    code, out, err = run(capsys, "chat", tmp_path, "--max-new-tokens", 4)
    assert code == 0, err
    assert out.splitlines() == ["JULIET: ", "JULIET: "]
    assert err.count("note: the model wrote an empty reply") == 1
    assert "speaker turns" in err and "dialogue_corpus" in err and "--objective clm" in err


# --- seq2seq folders in evaluate / predict / text2text -----------------------------------------

WORDS = "apple river stone cloud tiger lemon window garden".split()


@pytest.fixture(scope="module")
def bart_run(tmp_path_factory):
    """A tiny random BART folder as finetune leaves OUT/best: model, tokenizer and a saved prefix."""
    from lmzoo.models.bart import BartForConditionalGeneration
    from lmzoo.presets import preset_config
    from lmzoo.tasks.seq2seq import Seq2SeqOptions, save_task_files
    from lmzoo.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("bart")
    rng = random.Random(0)
    (folder / "corpus.txt").write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(4)) for _ in range(200)))
    tok = train_tokenizer([str(folder / "corpus.txt")], kind="bpe", vocab_size=300, out_dir=str(folder))
    torch.manual_seed(0)
    model = BartForConditionalGeneration(preset_config("bart-tiny", vocab_size=tok.vocab_size, max_positions=32,
                                                       d_model=32, n_heads=2, d_ff=64))
    model.save_pretrained(folder)
    save_task_files(folder, tok, Seq2SeqOptions(prefix="stone stone "))
    sources = [" ".join(rng.choice(WORDS) for _ in range(3)) for _ in range(6)]
    with open(folder / "pairs.jsonl", "w") as f:
        for s in sources:
            f.write(json.dumps({"source": s, "target": " ".join(reversed(s.split()))}) + "\n")
    (folder / "sources.txt").write_text("\n".join(sources) + "\n\n")
    return folder, sources


def copying_model(monkeypatch):
    """Make every seq2seq model answer with its encoder's input (ids up to its end token): outputs then
    show what the model read, the saved prefix included, in order."""
    import lmzoo.tasks.seq2seq as seq2seq

    monkeypatch.setattr(seq2seq, "generate", lambda model, input_ids, **options: input_ids)


def test_evaluate_scores_a_seq2seq_folder(bart_run, tmp_path, capsys, monkeypatch):
    folder, sources = bart_run
    # real generation: the flag and the positional form give the same scores
    code, out, err = run(capsys, "evaluate", "--model", folder, "--data", folder / "pairs.jsonl", "--max-new-tokens", 6)
    assert code == 0, err
    code, positional, _ = run(capsys, "evaluate", folder, "--data", folder / "pairs.jsonl", "--max-new-tokens", 6)
    assert code == 0 and positional == out and out.startswith("bleu ")
    # a model that copies its input scores 100 against targets "<saved prefix><source>", and less without it
    copying_model(monkeypatch)
    with open(tmp_path / "copy.jsonl", "w") as f:
        for i, source in enumerate(sources):
            f.write(json.dumps({"input": source, "output": ("stone stone " if i % 3 else "") + source}) + "\n")
    code, out, err = run(capsys, "evaluate", folder, "--data", tmp_path / "copy.jsonl", "--source-column", "input",
                         "--target-column", "output", "--out", tmp_path / "report")
    assert code == 0, err
    metrics = json.loads((tmp_path / "report" / "eval_metrics.json").read_text())
    assert set(metrics) == {"bleu", "chrf", "rougeL", "n"} and metrics["n"] == 6
    assert 50 < metrics["chrf"] < 100 and 50 < metrics["rougeL"] < 100  # two of six targets lack the prefix
    rows = [json.loads(line) for line in (tmp_path / "report" / "eval_predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == ["stone stone " + s for s in sources]
    code, out, _ = run(capsys, "evaluate", folder, "--data", tmp_path / "copy.jsonl", "--source-column", "input",
                       "--target-column", "output", "--prefix", "")  # --prefix overrides the saved one
    assert code == 0 and "chrf 100.00" not in out
    code, _, err = run(capsys, "evaluate", folder, "--data", folder / "pairs.jsonl", "--label-column", "y")
    assert code == 2 and "--label-column does not apply" in err and err.count("\n") == 1


def test_predict_and_text2text_read_inputs_from_a_file(bart_run, tmp_path, capsys, monkeypatch):
    from lmzoo.pipelines import load_model_and_tokenizer
    from lmzoo.tasks.seq2seq import generate_texts

    folder, sources = bart_run
    model, tokenizer = load_model_and_tokenizer(folder)
    real = generate_texts(model, tokenizer, sources, max_new_tokens=6, prefix="stone stone ")
    code, _, err = run(capsys, "predict", "--model", folder, "--input", folder / "sources.txt", "--output",
                       tmp_path / "real.jsonl", "--max-new-tokens", 6)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "real.jsonl").read_text().splitlines()]
    assert rows == [{"source": s, "prediction": p} for s, p in zip(sources, real)]

    copying_model(monkeypatch)
    expected = ["stone stone " + s for s in sources]  # the saved prefix, then each source, in order
    for source in (folder / "sources.txt", folder / "pairs.jsonl"):
        code, _, err = run(capsys, "predict", folder, "--input", source, "--output", tmp_path / "p.jsonl")
        assert code == 0, err
        rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
        assert rows == [{"source": s, "prediction": p} for s, p in zip(sources, expected)]
    code, out, err = run(capsys, "text2text", folder, "--input", folder / "sources.txt")
    assert code == 0 and out.splitlines() == expected, err
    code, _, _ = run(capsys, "text2text", folder, "--input", folder / "pairs.jsonl", "--output", tmp_path / "t.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert code == 0 and [r["prediction"] for r in rows] == expected
    code, _, _ = run(capsys, "text2text", folder, "--input", folder / "sources.txt", "--output", tmp_path / "t.txt",
                     "--prefix", "cloud ")
    assert code == 0 and (tmp_path / "t.txt").read_text().splitlines() == ["cloud " + s for s in sources]
    code, out, _ = run(capsys, "text2text", folder, sources[0])  # the positional text form
    assert code == 0 and out.splitlines() == expected[:1]
    code, _, err = run(capsys, "text2text", folder, "x", "--input", folder / "sources.txt")
    assert code == 2 and "either on the command line or as --input" in err


def test_classifier_folders_refuse_seq2seq_flags(tmp_path, capsys):
    """Dispatch by what the folder holds: a classifier head never goes down the seq2seq path."""
    import lmzoo
    from lmzoo.tasks.seq2seq import is_seq2seq_folder

    lmzoo.from_preset("bert-tiny", architecture="BertForSequenceClassification", vocab_size=60).save_pretrained(
        tmp_path / "clf")
    lmzoo.from_preset("t5-tiny", vocab_size=60).save_pretrained(tmp_path / "t5")
    assert not is_seq2seq_folder(tmp_path / "clf") and is_seq2seq_folder(tmp_path / "t5")
    code, _, err = run(capsys, "predict", tmp_path / "clf", "--prefix", "translate: ")
    assert code == 2 and "--prefix does not apply" in err and err.count("\n") == 1
