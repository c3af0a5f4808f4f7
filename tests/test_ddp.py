"""Two gloo/CPU processes under torchrun (DDP or FSDP2) train like one process with a doubled batch."""

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

from lmzoo.train import TrainConfig, read_metrics, train

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from test_train_loop import SEQ, VOCAB, PatternData, make_collate, tiny_model  # noqa: E402

STEPS = 8


def make_model(kind: str) -> torch.nn.Module:
    """The tiny MLP of test_train_loop, or a 2-layer lmzoo GPT (blocks in a ModuleList, which FSDP2
    shards one by one; tied head)."""
    if kind == "tiny":
        return tiny_model()
    import lmzoo

    torch.manual_seed(0)
    return lmzoo.from_preset("gpt-tiny", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, max_positions=SEQ,
                             dropout=0.0, attention_dropout=0.0)


def train_config(fsdp: bool, batch_size: int) -> TrainConfig:
    # evaluation right before each checkpoint: under FSDP2 the save must see the sharded parameters
    return TrainConfig(max_steps=STEPS, batch_size=batch_size, grad_accum=2, lr=1e-2, log_every=1, save_every=4,
                       eval_every=4, seed=3, fsdp=fsdp)


SCRIPT = """
import sys, json, torch
sys.path.insert(0, {tests!r})
import torch.distributed as dist
from test_ddp import make_model, train_config
from test_train_loop import PatternData, make_collate
from lmzoo.train import train

result = train(make_model({kind!r}), PatternData(), make_collate(0.0), out_dir={out!r},
               config=train_config({fsdp}, 8), progress=False, eval_data=PatternData(32))
assert not dist.is_initialized()  # the loop destroyed the group it created
assert result.step == {steps}
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tiny", "gpt"])
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_match_single_process_double_batch(tmp_path, fsdp, kind):
    single = make_model(kind)
    train(single, PatternData(), make_collate(0.0), out_dir=tmp_path / "single", config=train_config(fsdp, 16),
          progress=False, eval_data=PatternData(32))

    out = tmp_path / "ddp"
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(SCRIPT).format(tests=str(TESTS), steps=STEPS, out=str(out), fsdp=fsdp,
                                                     kind=kind))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script)],
        env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ddp_log = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    one_log = [r for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in ddp_log] == list(range(1, STEPS + 1))  # rank 0 alone wrote, once per step
    assert one_log[-1]["loss"] < one_log[0]["loss"]
    for a, b in zip(one_log, ddp_log):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["lr"] == a["lr"]
    ddp_eval = [r for r in read_metrics(out / "metrics.jsonl") if "eval_loss" in r]
    one_eval = [r for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in ddp_eval] == [4, 8]
    for a, b in zip(one_eval, ddp_eval):
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4)
    # Checkpoints hold one RNG state per rank; the final model equals the single-process one.
    for step in (4, STEPS):
        state = json.loads((out / "checkpoints" / f"step-{step:08d}" / "trainer_state.json").read_text())
        assert state["world_size"] == 2 and len(state["rng"]) == 2
    if kind == "tiny":
        final = make_model(kind)
        safetensors.torch.load_model(final, str(out / "model.safetensors"))
    else:  # an HF-format folder
        import lmzoo

        final = lmzoo.from_pretrained(out)
    for (name, p), q in zip(single.named_parameters(), final.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_finetune_under_torchrun_keeps_a_loadable_best_model(tmp_path, fsdp):
    """classify (from an MLM-only BERT: no pooler in the checkpoint) and seq2seq (BART: evaluation by
    generation) under two processes: the best model is written from full weights, also under FSDP2."""
    import random

    import lmzoo
    from lmzoo.models.bart import BartForConditionalGeneration
    from lmzoo.models.bert import BertForMaskedLM
    from lmzoo.presets import preset_config
    from lmzoo.tokenizer import train_tokenizer

    rng = random.Random(0)
    words = "good bad fine awful great poor the a king queen night day".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choices(words, k=8)) for _ in range(100)))
    rows = [" ".join(rng.choices(words, k=6)) for _ in range(48)]
    (tmp_path / "cls.csv").write_text("text,label\n" + "".join(f"{r},{'pos' if 'good' in r else 'neg'}\n" for r in rows))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"source": r, "target": r}) + "\n" for r in rows))
    folders = {}
    for name, kind, build in (
        ("bert", "wordpiece", lambda v: BertForMaskedLM(preset_config("bert-tiny", vocab_size=v, d_model=32, n_heads=2,
                                                                      d_ff=64, max_positions=32))),
        ("bart", "bpe", lambda v: BartForConditionalGeneration(preset_config("bart-tiny", vocab_size=v, d_model=32,
                                                                             n_heads=2, d_ff=64, max_positions=64))),
    ):
        folders[name] = tmp_path / name
        tok = train_tokenizer([str(corpus)], kind=kind, vocab_size=261, out_dir=str(folders[name]))
        torch.manual_seed(0)
        build(tok.vocab_size).save_pretrained(folders[name])

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for task, folder, data in (("classify", folders["bert"], "cls.csv"), ("seq2seq", folders["bart"], "pairs.jsonl")):
        out = tmp_path / f"ft-{task}"
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "lmzoo.cli",
             "finetune", "--task", task, "--model", str(folder), "--train", str(tmp_path / data),
             "--eval", str(tmp_path / data), "--out", str(out), "--max-steps", "4", "--batch-size", "4",
             "--eval-every", "2", "--save-every", "2", "--no-progress", *(["--fsdp"] if fsdp else [])],
            env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, [line for line in proc.stderr.splitlines() if "error" in line.lower()][:5]
        # the best model holds exactly the weights of the checkpoint it was scored at
        report = "eval_metrics.json" if task == "classify" else "seq2seq_metrics.json"
        step = json.loads((out / "best" / report).read_text())["step"]
        best = lmzoo.from_pretrained(out / "best")
        at_step = lmzoo.from_pretrained(out / "checkpoints" / f"step-{step:08d}")
        assert type(best) is type(lmzoo.from_pretrained(out))
        for (name, p), q in zip(best.state_dict().items(), at_step.state_dict().values()):
            assert torch.equal(p, q), name


@pytest.mark.slow
def test_xlnet_pretrains_under_ddp(tmp_path):
    """PLM leaves XLNet's segment parameters without gradient (no token types): DDP must be told."""
    import random

    rng = random.Random(0)
    words = "the king queen lord lady sword crown night day love death war peace heart".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choices(words, k=60)) + "." for _ in range(200)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "lmzoo.cli",
         "pretrain", "--preset", "xlnet-tiny", "--objective", "plm", "--data", str(corpus), "--out", str(tmp_path / "run"),
         "--vocab-size", "200", "--seq-len", "32", "--max-steps", "3", "--batch-size", "4", "--save-every", "3",
         "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, [line for line in proc.stderr.splitlines() if "error" in line.lower()][:5]
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r][-1] == 3
