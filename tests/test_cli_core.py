"""End-to-end through the CLI: tokenizer → pretrain → fill-mask / nsp, resume, and bad input."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from lmzoo.cli import main
from lmzoo.train.loop import read_metrics

# A learnable corpus: documents of counting sentences in words ("one two three ..."), so a masked
# number is predictable from its neighbours and the next sentence continues the count.
NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def learnable_corpus(path, n_docs=60, seed=0):
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        start = rng.randrange(0, 4)
        sentences = [" ".join(NUMBERS[start + s + k] for k in range(4)) + "." for s in range(6)]
        docs.append("\n".join(sentences))
    path.write_text("\n\n".join(docs) + "\n")
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TINY = ["--max-steps", 100, "--batch-size", 16, "--seq-len", 32, "--lr", 3e-3, "--warmup-steps", 5, "--no-progress",
        "--log-every", 5, "--vocab-size", 60]


def test_pretrain_bert_learns_then_fill_mask_and_nsp(tmp_path, capsys):
    corpus = learnable_corpus(tmp_path / "numbers.txt")
    out = tmp_path / "bert"
    code, stdout, stderr = run(capsys, "pretrain", "--preset", "bert-tiny", "--objective", "mlm+nsp", "--data", corpus,
                               "--out", out, "--eval-fraction", 0.2, *TINY)
    assert code == 0, stderr
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < 0.6 * losses[0], losses  # the loss falls substantially within 100 steps
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForPreTraining"]

    code, stdout, _ = run(capsys, "fill-mask", out, "three four [MASK] six.", "--top-k", 3)
    assert code == 0 and stdout.startswith("mask 1:")
    probabilities = [float(line.split()[0]) for line in stdout.splitlines()[1:]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    code, stdout, _ = run(capsys, "nsp", out, "one two three four.", "two three four five.")
    assert code == 0 and 0.0 <= float(stdout.split("=")[1]) <= 1.0


def test_roberta_mlm_whole_word_and_refuses_to_overwrite(tmp_path, capsys):
    corpus = learnable_corpus(tmp_path / "numbers.txt")
    out = tmp_path / "roberta"
    args = ["pretrain", "--preset", "roberta-tiny", "--objective", "mlm", "--whole-word", "--data", corpus,
            "--out", out, "--eval-fraction", 0.2, *TINY[:1], 20, *TINY[2:-1], 261]
    code, _, stderr = run(capsys, *args)
    assert code == 0, stderr
    assert json.loads((out / "config.json").read_text())["architectures"] == ["RobertaForMaskedLM"]
    code, stdout, _ = run(capsys, "fill-mask", out, "three four <mask> six.")
    assert code == 0 and "mask 1:" in stdout
    before = (out / "model.safetensors").read_bytes()
    code, _, stderr = run(capsys, *args)
    assert code == 2 and "already holds a run" in stderr and stderr.count("\n") == 1
    assert (out / "model.safetensors").read_bytes() == before


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, capsys):
    corpus = learnable_corpus(tmp_path / "numbers.txt")
    common = ["pretrain", "--preset", "bert-tiny", "--data", corpus, "--eval-fraction", 0.2, "--batch-size", 8,
              "--seq-len", 32, "--vocab-size", 60, "--log-every", 1, "--no-progress", "--save-every", 4, "--keep-checkpoints", 5, "--lr", 1e-3]
    assert run(capsys, *common, "--out", tmp_path / "full", "--max-steps", 10)[0] == 0
    # the same run, as if it had died right after the step-4 checkpoint
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for ckpt in (tmp_path / "cut" / "checkpoints").iterdir():
        if not ckpt.name.endswith("00000004"):
            shutil.rmtree(ckpt)
    for name in ("model.safetensors", "config.json"):
        (tmp_path / "cut" / name).unlink()
    code, _, stderr = run(capsys, *common, "--out", tmp_path / "cut", "--max-steps", 10, "--resume")
    assert code == 0, stderr

    def losses(folder):
        return [(r["step"], r["loss"]) for r in read_metrics(folder / "metrics.jsonl") if "loss" in r]

    assert losses(tmp_path / "cut") == losses(tmp_path / "full")


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda d: ["--data", d / "missing.txt"], "no text files found"),
        (lambda d: ["--data", d / "empty.txt"], "empty"),
        (lambda d: ["--data", d / "binary.txt"], "binary"),
        (lambda d: ["--data", d / "latin1.txt"], "UTF-8"),
        (lambda d: ["--data", d / "small.txt", "--seq-len", 64], "too small"),
        (lambda d: ["--data", d / "numbers.txt", "--mask-prob", 1.5], "mask_prob"),
        (lambda d: ["--data", d / "numbers.txt", "--vocab-size", 3], "vocab_size"),
        (lambda d: ["--data", d / "numbers.txt", "--max-steps", -5], "max_steps"),
    ],
)
def test_bad_pretrain_input_is_one_line_exit_2(tmp_path, capsys, make_args, message):
    learnable_corpus(tmp_path / "numbers.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02text\x00")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "small.txt").write_text("one two.\n\nthree four.\n\n" * 4)
    code, _, stderr = run(capsys, "pretrain", "--preset", "bert-tiny", "--out", tmp_path / "out", "--no-progress",
                          "--vocab-size", 60, "--batch-size", 64, *make_args(tmp_path))
    assert code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert message.lower() in stderr.lower(), stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_fill_mask_and_nsp_refuse_models_without_the_head(tmp_path, capsys):
    import lmzoo

    model = lmzoo.from_preset("bert-tiny", architecture="BertModel", vocab_size=60)
    model.save_pretrained(tmp_path)
    from lmzoo.tokenizer import train_tokenizer

    train_tokenizer([str(learnable_corpus(tmp_path / "c.txt"))], kind="wordpiece", vocab_size=60, out_dir=str(tmp_path))
    code, _, stderr = run(capsys, "fill-mask", tmp_path, "one [MASK] three")
    assert code == 2 and "no masked-LM head" in stderr
    code, _, stderr = run(capsys, "nsp", tmp_path, "one two", "three four")
    assert code == 2 and "no next-sentence head" in stderr
    code, _, stderr = run(capsys, "fill-mask", tmp_path / "nope", "a [MASK]")
    assert code == 2 and "not found" in stderr


def test_train_tokenizer_cli(tmp_path, capsys):
    corpus = learnable_corpus(tmp_path / "numbers.txt")
    code, stdout, _ = run(capsys, "train-tokenizer", corpus, "--kind", "bpe", "--vocab-size", 300, "--out", tmp_path / "tok")
    assert code == 0 and (tmp_path / "tok" / "merges.txt").is_file()
    from lmzoo.tokenizer import Tokenizer

    tok = Tokenizer.load(tmp_path / "tok")
    assert tok.decode(tok.encode("three four five.")) == "three four five."
    code, _, stderr = run(capsys, "train-tokenizer", corpus, "--kind", "wordpiece", "--vocab-size", 2, "--out", tmp_path / "t2")
    assert code == 2 and "vocab_size" in stderr


def test_every_verb_has_help(capsys):
    from lmzoo.cli import VERBS

    for name in VERBS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert name in capsys.readouterr().out


def test_xlnet_plm_pretrain_then_fill_blank(tmp_path, capsys):
    corpus = learnable_corpus(tmp_path / "numbers.txt", n_docs=200)
    out = tmp_path / "xlnet"
    code, stdout, stderr = run(capsys, "pretrain", "--preset", "xlnet-tiny", "--objective", "plm", "--data", corpus,
                               "--out", out, "--eval-fraction", 0.2, "--max-steps", 150, "--batch-size", 16,
                               "--seq-len", 32, "--vocab-size", 60, "--lr", 2e-3, "--no-progress")
    assert code == 0, stderr
    assert json.loads((out / "config.json").read_text())["architectures"] == ["XLNetLMHeadModel"]
    assert "plm_accuracy" in stdout
    accuracy = float(stdout.split("plm_accuracy")[1].split(";")[0])
    assert accuracy > 0.35, stdout  # far above chance (1/60) and the unigram rate of the counting corpus
    code, stdout, _ = run(capsys, "fill-mask", out, "one two <mask> four five.", "--top-k", 3)
    assert code == 0
    assert "three" in [line.split()[1] for line in stdout.splitlines()[1:]], stdout
    code, _, stderr = run(capsys, "pretrain", "--preset", "xlnet-tiny", "--objective", "plm", "--data", corpus,
                          "--out", tmp_path / "k1", "--plm-k", 1)
    assert code == 2 and "--plm-k must be a number > 1" in stderr


@pytest.mark.slow
def test_pretrain_under_torchrun_two_processes(tmp_path):
    import subprocess
    import sys

    corpus = learnable_corpus(tmp_path / "numbers.txt")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lmzoo.cli",
           "pretrain", "--preset", "bert-tiny", "--data", str(corpus), "--out", str(out), "--max-steps", "12",
           "--batch-size", "8", "--seq-len", "32", "--vocab-size", "60", "--no-progress", "--eval-fraction", "0.2",
           "--log-every", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                                "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("step 12:") == 1  # rank 0 reports, once
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 13))  # one writer: every step logged exactly once
    import lmzoo

    assert type(lmzoo.from_pretrained(out)).__name__ == "BertForPreTraining"


@pytest.mark.parametrize("preset,objective,threshold", [("t5-tiny", "span", 0.3), ("bart-tiny", "denoise", 0.7)])
def test_seq2seq_pretraining_objectives_learn(tmp_path, capsys, preset, objective, threshold):
    corpus = learnable_corpus(tmp_path / "numbers.txt", n_docs=200)
    out = tmp_path / preset
    code, stdout, stderr = run(capsys, "pretrain", "--preset", preset, "--objective", objective, "--data", corpus,
                               "--out", out, "--eval-fraction", 0.2, "--max-steps", 100, "--batch-size", 16,
                               "--seq-len", 32, "--vocab-size", 261, "--lr", 2e-3, "--no-progress")
    assert code == 0, stderr
    accuracy = float(stdout.split("token_accuracy")[1].split(";")[0])
    assert accuracy > threshold, stdout  # of the target tokens, on held-out documents
    code, _, stderr = run(capsys, "pretrain", "--preset", preset, "--objective", "plm", "--data", corpus,
                          "--out", tmp_path / "wrong")
    assert code == 2 and "trains xlnet presets" in stderr


def test_gpt_clm_pretrain_then_generate(tmp_path, capsys):
    corpus = learnable_corpus(tmp_path / "numbers.txt", n_docs=200)
    out = tmp_path / "gpt"
    code, stdout, stderr = run(capsys, "pretrain", "--preset", "gpt-tiny", "--data", corpus, "--out", out,
                               "--eval-fraction", 0.2, "--max-steps", 150, "--batch-size", 16, "--seq-len", 32,
                               "--vocab-size", 261, "--lr", 2e-3, "--no-progress")
    assert code == 0, stderr
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    accuracy = float(stdout.split("clm_accuracy")[1].split(",")[0].split(";")[0])
    assert accuracy > 0.7, stdout  # counting in words is predictable after the first word
    code, stdout, _ = run(capsys, "generate", out, "three four five", "--max-new-tokens", 4)
    assert code == 0 and stdout.startswith("three four five six"), stdout
