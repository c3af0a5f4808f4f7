"""Code completion end to end: byte-level BPE keeps code byte for byte, and a tiny GPT pretrained
on a repetitive code corpus completes held-out prefixes through `lmzoo complete`, stopping
exactly at the end of the line / block."""

from __future__ import annotations

import importlib.util
import random
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from lmzoo.cli import main
from lmzoo.tokenizer import Tokenizer, train_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRAIN_FILES = ["string.py", "glob.py", "textwrap.py", "json/__init__.py", "fnmatch.py"]


def load_example():
    if "code_completion_example" not in sys.modules:  # registered first: its dataclass looks itself up
        path = Path(__file__).resolve().parents[1] / "examples" / "code_completion.py"
        spec = importlib.util.spec_from_file_location("code_completion_example", path)
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules["code_completion_example"]


@pytest.fixture(scope="module")
def code_bpe(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("code-bpe")
    train_tokenizer([str(STDLIB / f) for f in TRAIN_FILES], kind="bpe", vocab_size=1000, out_dir=str(folder),
                    document_split="file")
    return Tokenizer.load(folder)  # as pretrain and `lmzoo complete` load it


def non_ascii_stdlib_files(n: int) -> list[Path]:
    found = []
    for path in sorted(STDLIB.glob("*.py")):
        text = path.read_bytes().decode("utf-8", errors="replace")
        if not text.isascii() and "\ufffd" not in text and "<s>" not in text:
            found.append(path)
        if len(found) == n:
            break
    return found


def test_byte_level_bpe_round_trips_real_stdlib_files_exactly(code_bpe):
    files = [STDLIB / f for f in ("os.py", "inspect.py", "dataclasses.py")] + non_ascii_stdlib_files(3)
    assert len(files) == 6 and not any(str(f).endswith(tuple(TRAIN_FILES)) for f in files)  # unseen files
    texts = [f.read_bytes().decode("utf-8") for f in files]
    assert any(not t.isascii() for t in texts) and all("\n\n\n" in t for t in texts[:3])  # blank lines too
    first = texts[0]
    # the same real code with tab indentation, trailing spaces, Windows line ends and form feeds
    variants = [first.replace("    ", "\t"), first.replace("\n", "  \n"), first.replace("\n", "\r\n"),
                first.replace("\n\n\n", "\n\f\n\n"), "\n\n" + first + "\n \t\n"]
    for text in texts + variants:
        assert code_bpe.decode(code_bpe.encode(text)) == text
    for text in texts:  # real merges, not one token per byte
        assert len(code_bpe.encode(text)) < len(text.encode()) / 2
    # a line break and its indentation are one token (the last space goes with the next word)
    ids = code_bpe.encode("\n        return x")
    assert code_bpe.decode(ids[:1]) == "\n       " and code_bpe.decode(ids[1:2]) == " return"


def test_the_round_trip_check_fails_loudly(code_bpe, tmp_path):
    example = load_example()
    good, special = tmp_path / "good.py", tmp_path / "special.py"
    good.write_text("def f(x):\n\treturn x  \n\n\n# é ü 名\n", encoding="utf-8")
    special.write_text('PATTERN = r"(?P<s>\\d{2})"  # <mask> </s>\n', encoding="utf-8")  # special-token strings
    assert example.check_round_trip(code_bpe, [good]) == len(code_bpe.encode(good.read_text()))
    # special-token strings in code are text: encoded as such they round-trip; recognised as
    # special tokens (the default for prompts) they would be dropped by decoding
    assert example.check_round_trip(code_bpe, [special]) > 0
    assert code_bpe.decode(code_bpe.encode(special.read_text())) != special.read_text()
    # a tokenizer that normalises whitespace (T5's Unigram) is caught too
    unigram = train_tokenizer([str(STDLIB / f) for f in TRAIN_FILES], kind="unigram", vocab_size=600)
    with pytest.raises(SystemExit, match="good.py"):
        example.check_round_trip(unigram, [good])


def test_example_corpus_skips_tests_and_holds_files_out_stably(tmp_path):
    example = load_example()
    for rel in ("a.py", "pkg/b.py", "test/test_a.py", "pkg/tests/t.py", "idlelib/idle_test/x.py",
                "site-packages/lib.py", "empty.py", "regex.py", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("" if rel == "empty.py" else "x = r'(?P<s>a)'\n" if rel == "regex.py" else "x = 1\n")
    files, skipped = example.python_files(tmp_path)
    # a special-token string in source (regex.py) is text: the file is kept
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.py", "pkg/b.py", "regex.py"]
    assert skipped == []
    # held out by the path inside the source folder: the same files wherever the folder lies
    stdlib = sorted(STDLIB.glob("*.py"))
    held = [f.name for f in stdlib if example.is_heldout(f, STDLIB, 10.0)]
    assert held == [f.name for f in stdlib if example.is_heldout(tmp_path / f.name, tmp_path, 10.0)]
    assert 0.04 < len(held) / len(stdlib) < 0.2  # about 10%
    assert not [f for f in stdlib if example.is_heldout(f, STDLIB, 0.0)]


# --- a tiny GPT completes code ------------------------------------------------------------------

# Two kinds of function, told apart by their name: "scale_N" indents with 4 spaces and doubles,
# "shift_N" indents with tabs and adds one. N is noise the model must skip over.
SCALE = "def scale_{n}(values):\n    total = 0\n    for v in values:\n        total += v * 2\n    return total\n"
SHIFT = "def shift_{n}(values):\n\ttotal = 0\n\tfor v in values:\n\t\ttotal += v + 1\n\treturn total\n"
HELD_OUT_N = 731  # never in the corpus


@pytest.fixture(scope="module")
def code_gpt(tmp_path_factory) -> tuple[Path, str]:
    """(model folder, the corpus text)."""
    rng = random.Random(0)
    data = tmp_path_factory.mktemp("code-corpus")
    for f in range(8):  # 8 files × 20 functions × 5 lines
        functions = [rng.choice([SCALE, SHIFT]).format(n=rng.randrange(200)) for _ in range(20)]
        (data / f"module_{f}.py").write_text("\n".join(functions))
    out = tmp_path_factory.mktemp("code-gpt")
    code = main(["pretrain", "--preset", "gpt-tiny", "--objective", "clm", "--data", str(data / "*.py"),
                 "--document-split", "file", "--vocab-size", "400", "--seq-len", "64", "--batch-size", "16",
                 "--max-steps", "60", "--lr", "3e-3", "--warmup-steps", "5", "--eval-fraction", "0.2",
                 "--log-every", "20", "--out", str(out), "--no-progress"])
    assert code == 0
    return out, "".join(p.read_text() for p in sorted(data.glob("*.py")))


def complete(capsys, folder: Path, prefix: str, until: str, tmp_path: Path) -> str:
    prompt = tmp_path / f"prompt-{until}.py"
    prompt.write_text(prefix)
    capsys.readouterr()
    code = main(["complete", str(folder), "--file", str(prompt), "--until", until, "--max-new-tokens", "60"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def raw_continuation(folder: Path, prefix: str, n: int = 60) -> str:
    """Greedy text without any stopping rule: what the boundary has to cut."""
    import lmzoo
    from lmzoo.generate import generate

    model, tokenizer = lmzoo.from_pretrained(folder), Tokenizer.load(folder)
    ids = generate(model, torch.tensor([tokenizer.encode(prefix)]), max_new_tokens=n)[0].tolist()
    return tokenizer.decode(ids)


def test_loss_falls_on_the_code_corpus(code_gpt):
    from lmzoo.train import read_metrics

    records = read_metrics(code_gpt[0] / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert losses[-1] < 0.3 * losses[0]
    assert evals[-1]["clm_accuracy"] > 0.8


@pytest.mark.parametrize("prefix, until, expected", [
    # a whole function body, spaces; stops before the next def
    (f"def scale_{HELD_OUT_N}(values):", "block", SCALE.split(":", 1)[1]),
    # the inner block only: stops before the dedented `return`
    (SCALE.format(n=HELD_OUT_N).split("\n        total +=")[0], "block", "\n        total += v * 2\n"),
    # tabs survive, and the rest of the line only
    (SHIFT.format(n=HELD_OUT_N).split(" v + 1")[0], "line", " v + 1\n"),
    (f"def shift_{HELD_OUT_N}(values):", "block", SHIFT.split(":", 1)[1]),
])
def test_complete_held_out_prefix_stops_exactly_at_the_boundary(code_gpt, capsys, tmp_path, prefix, until, expected):
    folder, corpus = code_gpt
    assert prefix not in corpus  # held out
    assert complete(capsys, folder, prefix, until, tmp_path) == expected
    # left alone the model writes on past the boundary (more code): the stop is the rule's doing
    raw = raw_continuation(folder, prefix)
    assert raw.startswith(expected) and raw[len(expected):].strip()


@pytest.mark.parametrize("prefix, expected", [
    # a file that ends in a newline (as editors save them): the model must not start from a bare
    # newline token it never saw in training (newline + indentation is one token) — token healing
    (f"def scale_{HELD_OUT_N}(values):\n", SCALE.split(":\n", 1)[1]),
    (f"def shift_{HELD_OUT_N}(values):\n", SHIFT.split(":\n", 1)[1]),
    (f"def scale_{HELD_OUT_N}(values):\n    ", SCALE.split(":\n    ", 1)[1]),
])
def test_complete_heals_a_prefix_ending_in_whitespace(code_gpt, capsys, tmp_path, prefix, expected):
    folder, _ = code_gpt
    assert complete(capsys, folder, prefix, "block", tmp_path) == expected


def test_complete_keeps_the_end_of_a_long_prefix_within_the_context(code_gpt, capsys, tmp_path):
    """A prefix longer than --context (here the pretraining --seq-len, 64) is cut from the left: the
    model still sees the function being written and completes it."""
    folder, corpus = code_gpt
    prefix = corpus[:3000] + f"\ndef scale_{HELD_OUT_N}(values):"
    prompt = tmp_path / "long.py"
    prompt.write_text(prefix)
    capsys.readouterr()
    code = main(["complete", str(folder), "--file", str(prompt), "--context", "64", "--max-new-tokens", "40"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "note: completing from the last 24 of the prefix's" in err
    assert out == SCALE.split(":", 1)[1]


@pytest.mark.parametrize("args, message", [
    (["--context", "0"], "--context must be in 1..512"),
    (["--context", "513"], "--context must be in 1..512"),
    (["--context", "64", "--max-new-tokens", "64"], "leaves no room for the prefix"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be > 0"),
])
def test_complete_bad_context_is_a_one_line_error(code_gpt, capsys, tmp_path, args, message):
    prompt = tmp_path / "p.py"
    prompt.write_text("def f(x):")
    capsys.readouterr()
    assert main(["complete", str(code_gpt[0]), "--file", str(prompt), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
