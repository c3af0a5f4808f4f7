"""Dialogue end to end: pretrain a tiny GPT on speaker turns through the CLI, then `lmzoo chat` answers in turn."""

from __future__ import annotations

import io
import json
import random

from lmzoo.cli import main
from lmzoo.objectives.clm import chat_turn

# Juliet answers each word with a fixed reply: learnable, and impossible to answer right by chance.
REPLIES = {"apple": "red fruit", "sky": "blue above", "grass": "green below", "snow": "white cold",
           "night": "dark sleep", "sun": "bright day"}


def dialogue_file(path, n_scenes=300, seed=0) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n_scenes):
            words = rng.sample(sorted(REPLIES), 3)
            scene = "".join(chat_turn("Romeo", w) + chat_turn("Juliet", REPLIES[w]) for w in words)
            f.write(json.dumps({"text": scene}) + "\n")


def test_pretrained_gpt_answers_each_turn_in_chat(tmp_path, capsys, monkeypatch):
    data = tmp_path / "dialogue.jsonl"
    dialogue_file(data)
    out = tmp_path / "gpt"
    code = main(["pretrain", "--preset", "gpt-tiny", "--objective", "clm", "--data", str(data), "--out", str(out),
                 "--vocab-size", "300", "--seq-len", "64", "--batch-size", "16", "--max-steps", "150", "--lr", "3e-3",
                 "--warmup-steps", "10", "--eval-fraction", "0.1", "--no-progress", "--log-every", "50"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    questions = ["sky", "apple", "snow", "sun"]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(q + "\n" for q in questions)))
    code = main(["chat", str(out), "--max-new-tokens", "12"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines == [f"JULIET: {REPLIES[q]}" for q in questions], lines
