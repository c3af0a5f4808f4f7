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
