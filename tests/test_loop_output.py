"""What the training loop tells the user: one plain line per logging window without a progress bar,
torch.compile's output held to one line with its compile time measured apart, ``epochs`` as the step
count, and fine-tuning's batch cut to a training file smaller than one batch."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import compile_unavailable
from test_train_loop import PatternData, TinyLM, cfg, make_collate, tiny_model

from lmzoo.cli import main
from lmzoo.errors import UserError
from lmzoo.train import TrainConfig, read_metrics, train
from lmzoo.train.loop import log_line, steps_for_epochs

LINE = re.compile(r"^step (\d+)/(\d+) \| loss \d+\.\d{4} \| lr \d\.\d\de[-+]\d\d \| \d+ tok/s$")


def test_no_progress_prints_one_plain_line_per_window(tmp_path, capsys):
    train(tiny_model(), PatternData(64), make_collate(0.1), out_dir=tmp_path / "run",
          config=cfg(max_steps=10, log_every=4), progress=False)
    err = capsys.readouterr().err.splitlines()
    steps = [LINE.match(line) for line in err]
    assert all(steps), err
    assert [(int(m[1]), int(m[2])) for m in steps] == [(4, 10), (8, 10), (10, 10)]  # the last, partial window too
    logged = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [f"{r['loss']:.4f}" for r in logged] == [re.search(r"loss (\S+)", line)[1] for line in err]


def test_progress_bar_prints_no_plain_lines(tmp_path, capsys):
    train(tiny_model(), PatternData(64), make_collate(0.1), out_dir=tmp_path / "run",
          config=cfg(max_steps=4, log_every=2), progress=True)
    err = capsys.readouterr().err
    assert "train" in err and not any(LINE.match(line) for line in err.splitlines())


def test_log_line_shows_examples_per_second_without_tokens():
    record = {"step": 3, "loss": 0.5, "lr": 1e-3, "tokens_per_s": 0.0, "examples_per_s": 12.34, "mfu": 0.012}
    assert log_line(record, 9) == "step 3/9 | loss 0.5000 | lr 1.00e-03 | 12.3 ex/s | mfu 1.2%"


@pytest.mark.parametrize("epochs, grad_accum, steps", [(1.5, 1, 6), (1, 2, 2), (0.01, 1, 1), (2.2, 1, 9)])
def test_epochs_set_the_step_count(tmp_path, capsys, epochs, grad_accum, steps):
    # 64 examples, batches of 16 (x grad_accum): ceil(epochs * 64 / (16 * grad_accum))
    config = cfg(epochs=epochs, grad_accum=grad_accum, log_every=100)
    assert steps_for_epochs(config, 64) == steps == math.ceil(epochs * 64 / (16 * grad_accum))
    result = train(tiny_model(), PatternData(64), make_collate(0.1), out_dir=tmp_path / "run", config=config,
                   progress=False)
    assert result.step == steps
    state = json.loads((tmp_path / "run" / "checkpoints" / f"step-{steps:08d}" / "trainer_state.json").read_text())
    assert state["config"]["max_steps"] == steps and state["config"]["epochs"] == epochs
    assert f"note: {epochs:g} epochs of 64 examples: {steps} steps" in capsys.readouterr().err
    assert steps_for_epochs(config, 64, world_size=2) == math.ceil(epochs * 64 / (32 * grad_accum))


@pytest.mark.parametrize("epochs", [0, -1, math.nan, math.inf, True, "2"])
def test_epochs_must_be_positive_and_finite(epochs):
    with pytest.raises(UserError, match="epochs must be a positive finite number"):
        TrainConfig(epochs=epochs)


def test_max_steps_is_required_without_epochs():
    with pytest.raises(UserError, match="max_steps must be a positive integer, got 0"):
        TrainConfig()
    assert TrainConfig(epochs=1).max_steps == 0  # set by train() from the data


# ---- torch.compile ------------------------------------------------------------------------------


class BreakingLM(TinyLM):
    """TinyLM with a data-dependent Python branch: dynamo breaks the graph there and logs a long
    warning (the models themselves have none before their loss: tests/test_compile.py)."""

    def forward(self, input_ids, labels=None, attention_mask=None):
        if bool((input_ids >= 0).all()):
            return super().forward(input_ids, labels, attention_mask)
        raise AssertionError("negative token ids")


def test_compile_prints_one_line_and_measures_compile_time(tmp_path, capfd):
    reason = compile_unavailable()
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    result = train(BreakingLM(), PatternData(64), make_collate(0.1), out_dir=tmp_path / "run",
                   config=cfg(max_steps=4, log_every=2, compile=True), progress=False)
    err = capfd.readouterr().err.splitlines()
    assert sum("compil" in line.lower() for line in err) == 1, err
    assert [line for line in err if not LINE.match(line)] == [next(x for x in err if "compil" in x)], err
    assert re.match(r"^torch\.compile: compiled in \d+\.\d s \(a warm-up step, kept out of the throughput\)", err[0])
    assert "compiler warning(s) held back (first: Graph break" in err[0]  # the ~20-line warning, as one clause
    assert result.compile_s is not None and result.compile_s > 0
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert first["compile_s"] == pytest.approx(result.compile_s)
    assert first["step_time_s"] < result.compile_s  # the warm-up is not in the window's time


# ---- fine-tuning on fewer examples than one batch ------------------------------------------------


def test_finetune_cuts_the_batch_to_a_small_training_file(tmp_path, capsys):
    from test_bad_input import _model, _tokenizer

    tok = _tokenizer(tmp_path / "mlm")
    _model(tmp_path / "mlm", "BertForPreTraining", tok.vocab_size)
    rows = ["text,label", "the cat sat,pos", "a dog ran,neg", "the mat,pos", "ran far away,neg", "alice sat,pos"]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    sentences = ["alice\tB-PER\nsmith\tI-PER\nwent\tO\n", "the\tO\ncat\tO\n", "paris\tO\n"]
    (tmp_path / "train.conll").write_text("\n".join(sentences))
    for task, data, n in [("classify", "train.csv", 5), ("ner", "train.conll", 3)]:
        out = tmp_path / task
        assert main(["finetune", "--task", task, "--model", str(tmp_path / "mlm"), "--train", str(tmp_path / data),
                     "--out", str(out), "--max-steps", "2", "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert f"note: {tmp_path / data} has {n} examples, fewer than --batch-size 32: training with batches " \
               f"of {n}" in err, err
        state = json.loads((out / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
        assert state["config"]["batch_size"] == n and state["step"] == 2
