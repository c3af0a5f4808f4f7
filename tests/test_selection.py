"""The loop's best-model keeping and early stopping (lmzoo.train.Selection), with scores we choose:
the stop step, the best folder's weights, exact resume of best / stale, evaluation cadence apart
from checkpoints, the same decision on every rank under torchrun; and seq2seq label smoothing
reaching the training loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch.nn import functional as F

from lmzoo.errors import UserError
from lmzoo.train import Selection, TrainConfig, read_metrics, train

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from test_train_loop import PatternData, TinyLM, make_collate  # noqa: E402


class CountingLM(TinyLM):
    """TinyLM that counts its training forwards in a buffer: with grad_accum 1, ``seen`` is the step
    the weights belong to, and it is saved and resumed with them."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, input_ids, labels=None, attention_mask=None):
        if self.training:
            self.seen += 1
        return super().forward(input_ids, labels=labels, attention_mask=attention_mask)


def table_selection(table: dict[int, float], *, patience: int, snapshots: dict | None = None,
                    higher_is_better: bool = True) -> Selection:
    """Scores ``table[step]`` for the weights of ``step``; ``snapshots[step]`` keeps those weights."""

    def score(model):
        assert not model.training and not torch.is_grad_enabled()
        step = int(model.seen)
        if snapshots is not None:
            snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"acc": table[step], "n": 7, "per_step": {"step": step}}  # a table reaches save_best only

    def save_best(model, folder, metrics):
        safetensors.torch.save_model(model, str(folder / "model.safetensors"))
        (folder / "scores.json").write_text(json.dumps(metrics))

    return Selection(score=score, metric="acc", higher_is_better=higher_is_better, patience=patience,
                     save_best=save_best)


def config(**kw) -> TrainConfig:
    base = dict(max_steps=20, batch_size=16, lr=1e-2, log_every=1, eval_every=2, seed=3)
    return TrainConfig(**{**base, **kw})


def evals(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "eval_acc" in r]


def best_weights(out: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(out / "best" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    shared = set(a) & set(b)
    assert "hidden.weight" in shared and "seen" in shared
    for k in shared:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_early_stopping_stops_at_the_expected_step(tmp_path, capsys, higher_is_better):
    sign = 1.0 if higher_is_better else -1.0
    # best at step 4; 6 and 8 do not improve: with patience 2 the run ends at step 8, not 20
    table = {s: sign * v for s, v in {2: 0.5, 4: 0.7, 6: 0.6, 8: 0.7, 10: 0.9}.items()}
    model = CountingLM()
    result = train(model, PatternData(64), make_collate(0.0), out_dir=tmp_path, config=config(log_every=3),
                   eval_data=PatternData(32), select=table_selection(table, patience=2,
                                                                   higher_is_better=higher_is_better),
                   progress=False)
    assert result.step == 8 and result.stopped_early
    assert result.best == {"acc": table[4], "n": 7, "step": 4}
    records = evals(tmp_path)
    assert [(r["step"], r["eval_acc"]) for r in records] == [(s, table[s]) for s in (2, 4, 6, 8)]
    assert all("eval_loss" in r and "eval_per_step" not in r for r in records)  # one record per evaluation
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r] == [3, 6, 8]
    assert result.train_loss == [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r][-1]
    err = capsys.readouterr().err
    assert f"step 6: acc {table[6]:.4f}" in err and "early stop at step 8: no acc improvement in 2 evaluations" in err
    # a normal end otherwise: the final checkpoint (with the selection state) and the final model
    state = json.loads((tmp_path / "checkpoints" / "step-00000008" / "trainer_state.json").read_text())
    assert state["best"] == result.best and state["stale"] == 2
    final = safetensors.torch.load_file(str(tmp_path / "model.safetensors"))
    assert int(final["seen"]) == 8 and torch.equal(final["hidden.weight"], model.hidden.weight)
    scores = json.loads((tmp_path / "best" / "scores.json").read_text())
    assert scores == {"acc": table[4], "n": 7, "per_step": {"step": 4}, "step": 4}


def test_best_folder_holds_the_weights_of_the_best_evaluation(tmp_path):
    table = {2: 0.1, 4: 0.3, 6: 0.8, 8: 0.5, 10: 0.8}  # a tie does not improve: step 6 stays best
    snapshots: dict[int, dict] = {}
    result = train(CountingLM(), PatternData(64), make_collate(0.0), out_dir=tmp_path, config=config(max_steps=10),
                   select=table_selection(table, patience=0, snapshots=snapshots), progress=False)
    assert result.step == 10 and not result.stopped_early and result.best["step"] == 6
    assert sorted(snapshots) == [2, 4, 6, 8, 10]
    assert_same_weights(best_weights(tmp_path), snapshots[6])
    assert not torch.equal(snapshots[6]["hidden.weight"], snapshots[10]["hidden.weight"])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


class Kill(Exception):
    pass


def test_resume_after_a_kill_continues_best_and_stale_exactly(tmp_path):
    # Uninterrupted: best at 6, then 8, 10, 12 without improvement: patience 3 stops at 12. Killed at
    # the checkpoint of step 10 (best 6, stale 2) and resumed, the run must also stop at 12 with best
    # 6: a lost stale count would run on to 16, a lost best would take 12 (0.79) as the best.
    table = {2: 0.5, 4: 0.6, 6: 0.8, 8: 0.7, 10: 0.75, 12: 0.79, 14: 0.7, 16: 0.7, 18: 0.7, 20: 0.7}
    conf = config(save_every=5)
    collate = make_collate(0.15)
    snapshots: dict[int, dict] = {}
    full = train(CountingLM(), PatternData(64), collate, out_dir=tmp_path / "full", config=conf,
                 eval_data=PatternData(32), select=table_selection(table, patience=3, snapshots=snapshots),
                 progress=False)
    assert (full.step, full.stopped_early, full.best["step"]) == (12, True, 6)

    def kill_at_10(step, path):
        if step == 10:
            raise Kill

    with pytest.raises(Kill):
        train(CountingLM(), PatternData(64), collate, out_dir=tmp_path / "cut", config=conf, eval_data=PatternData(32),
              select=table_selection(table, patience=3), on_checkpoint=kill_at_10, progress=False)
    resumed = train(CountingLM(), PatternData(64), collate, out_dir=tmp_path / "cut", config=conf,
                    eval_data=PatternData(32), select=table_selection(table, patience=3), resume=True,
                    progress=False)
    assert (resumed.step, resumed.stopped_early, resumed.best) == (full.step, full.stopped_early, full.best)
    assert evals(tmp_path / "cut") == evals(tmp_path / "full")
    def logged(out: Path) -> list[tuple]:
        return [(r["step"], r["loss"], r["lr"]) for r in read_metrics(out / "metrics.jsonl") if "loss" in r]

    assert logged(tmp_path / "cut") == logged(tmp_path / "full")
    assert_same_weights(best_weights(tmp_path / "cut"), snapshots[6])

    # resuming the finished run: it had stopped, so it stays stopped (no step is trained)
    again = train(CountingLM(), PatternData(64), collate, out_dir=tmp_path / "cut", config=conf,
                  eval_data=PatternData(32), select=table_selection(table, patience=3), resume=True, progress=False)
    assert (again.step, again.stopped_early, again.best) == (12, True, full.best)


def test_eval_cadence_is_independent_of_save_every(tmp_path):
    table = {s: s / 100 for s in range(1, 11)}
    snapshots: dict[int, dict] = {}
    train(CountingLM(), PatternData(64), make_collate(0.0), out_dir=tmp_path, progress=False,
          config=config(max_steps=10, eval_every=3, save_every=5, keep_checkpoints=5), eval_data=PatternData(32),
          select=table_selection(table, patience=0, snapshots=snapshots))
    assert sorted(snapshots) == [3, 6, 9, 10]  # every eval_every steps and at the end
    assert [r["step"] for r in evals(tmp_path)] == [3, 6, 9, 10]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "eval_loss" in r] == [3, 6, 9, 10]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000005", "step-00000010"]
    # without eval data the selection alone still runs at its cadence
    snapshots.clear()
    train(CountingLM(), PatternData(64), make_collate(0.0), out_dir=tmp_path / "b", progress=False,
          config=config(max_steps=4, eval_every=2, save_every=0), select=table_selection(table, patience=0,
                                                                                       snapshots=snapshots))
    assert sorted(snapshots) == [2, 4] and [r["step"] for r in evals(tmp_path / "b")] == [2, 4]


def test_bad_selection_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="patience"):
        Selection(score=lambda m: {}, metric="acc", patience=-1)
    wrong = Selection(score=lambda m: {"f1": 1.0}, metric="acc")
    with pytest.raises(UserError, match="'acc' is not among the scores of this task \\(f1\\)"):
        train(CountingLM(), PatternData(64), make_collate(0.0), out_dir=tmp_path, config=config(max_steps=2),
              select=wrong, progress=False)


WORKER = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch.distributed as dist
from test_selection import CountingLM, config, table_selection
from test_train_loop import PatternData, make_collate
from lmzoo.train import is_main_process, train

table = {table!r}
result = train(CountingLM(), PatternData(64), make_collate(0.0), out_dir={out!r}, progress=False,
               config=config(batch_size=8, fsdp={fsdp}), select=table_selection(table, patience=2))
rank = int(os.environ["RANK"])
assert is_main_process() == (rank == 0)
with open({out!r} + f"/rank{{rank}}.json", "w") as f:
    json.dump({{"step": result.step, "stopped_early": result.stopped_early, "best": result.best}}, f)
"""


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_every_rank_takes_the_same_decision_under_torchrun(tmp_path, fsdp):
    """Rank 0 alone scores (the scorer sees the full weights, also under FSDP2); every rank stops at
    the same step with the same best, and rank 0 writes the best folder."""
    table = {2: 0.5, 4: 0.7, 6: 0.6, 8: 0.6, 10: 0.9}
    out = tmp_path / "run"
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER).format(tests=str(TESTS), out=str(out), table=table, fsdp=fsdp))
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1] == {"step": 8, "stopped_early": True, "best": {"acc": 0.7, "n": 7, "step": 4}}
    assert [(r["step"], r["eval_acc"]) for r in evals(out)] == [(2, 0.5), (4, 0.7), (6, 0.6), (8, 0.6)]
    assert int(best_weights(out)["seen"]) == 4
    assert proc.stderr.count("early stop at step 8") == 1  # rank 0 alone tells the user


def test_seq2seq_label_smoothing_reaches_the_training_loss(tmp_path):
    """The first step's logged loss is the smoothed cross-entropy of the first batch (all 16 pairs, so
    the batch is the data set in any order), computed here directly with F.cross_entropy."""
    from lmzoo.models.bart import BartForConditionalGeneration
    from lmzoo.presets import preset_config
    from lmzoo.tasks.seq2seq import Seq2SeqCollator, Seq2SeqDataset, finetune_seq2seq, load_seq2seq_model, read_pairs
    from lmzoo.tokenizer import train_tokenizer

    words = "apple river stone cloud tiger lemon window garden".split()
    (tmp_path / "corpus.txt").write_text("\n\n".join(" ".join(words[i:] + words[:i]) for i in range(8)))
    folder = tmp_path / "bart"
    tokenizer = train_tokenizer([str(tmp_path / "corpus.txt")], kind="bpe", vocab_size=300, out_dir=str(folder))
    torch.manual_seed(0)
    bart = BartForConditionalGeneration(preset_config("bart-tiny", vocab_size=tokenizer.vocab_size, dropout=0.0,
                                                      attention_dropout=0.0, max_positions=32))
    bart.final_logits_bias.normal_(0.0, 3.0)  # far from uniform predictions, where smoothing changes little
    bart.save_pretrained(folder)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"source": " ".join(words[i % 8:i % 8 + 3]), "target": words[i % 8]}) + "\n"
                             for i in range(16)))

    def first_loss(smoothing: float) -> float:
        from lmzoo.tasks.seq2seq import Seq2SeqOptions

        out = tmp_path / f"run-{smoothing}"
        finetune_seq2seq(model=str(folder), train_path=str(pairs), eval_path=None, out=out,
                         train_config=TrainConfig(max_steps=1, batch_size=16, log_every=1),
                         options=Seq2SeqOptions(label_smoothing=smoothing), progress=False)
        return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r][0]

    model, tokenizer = load_seq2seq_model(str(folder))
    data = Seq2SeqDataset(read_pairs(pairs), tokenizer)
    batch = Seq2SeqCollator(model.config.pad_token_id)([data[i] for i in range(len(data))])
    model.eval()  # no dropout in this model: the logits of the training step
    with torch.no_grad():
        logits = model(**batch).logits
    direct = {s: F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100,
                                 label_smoothing=s).item() for s in (0.0, 0.1)}
    plain, smoothed = first_loss(0.0), first_loss(0.1)
    assert plain == pytest.approx(direct[0.0], rel=1e-5)
    assert smoothed == pytest.approx(direct[0.1], rel=1e-5)
    assert abs(smoothed - plain) > 0.1
