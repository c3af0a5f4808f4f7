"""A run checkpointed by 2 gloo processes resumes with 1 (and the reverse) with the same global batch:
the same examples in the same order, and the losses of the uninterrupted run within fp32 tolerance."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmzoo.errors import UserError
from lmzoo.train import train

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from test_train_loop import PatternData, cfg, losses, make_collate, tiny_model  # noqa: E402

GLOBAL_BATCH, STEPS = 8, 4
# log_every 3, killed after the checkpoint of step 2: the resume continues an open logging window
WORKER = """
import sys
sys.path.insert(0, {tests!r})
from test_world_size_resume import run
run({out!r}, world=2, stop_at={stop_at}, resume={resume})
"""


class Stop(Exception):
    pass


def stop_after(step: int):
    def on_checkpoint(at: int, path: Path) -> None:
        if at == step:
            raise Stop

    return on_checkpoint


def run(out: str | Path, *, world: int, stop_at: int, resume: bool) -> None:
    """The run (4 steps, a checkpoint every 2) with ``world`` processes, stopped after step ``stop_at``."""
    config = cfg(max_steps=STEPS, batch_size=GLOBAL_BATCH // world, schedule="constant", log_every=3, save_every=2)
    try:
        train(tiny_model(), PatternData(), make_collate(0.0), out_dir=out, config=config, progress=False,
              resume=resume, on_checkpoint=stop_after(stop_at))
    except Stop:
        pass


def run_in_process(out: Path, stop_at: int, resume: bool) -> None:
    run(out, world=1, stop_at=stop_at, resume=resume)


def run_two_processes(tmp_path: Path, out: Path, stop_at: int, resume: bool) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER).format(tests=str(TESTS), out=str(out), resume=resume, stop_at=stop_at))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_resume_on_another_number_of_processes(tmp_path):
    whole = tmp_path / "whole"
    run_in_process(whole, 0, resume=False)
    reference = losses(whole)
    assert [step for step, _, _ in reference] == [3, 4]

    two_then_one = tmp_path / "two-then-one"
    run_two_processes(tmp_path, two_then_one, 2, resume=False)
    run_in_process(two_then_one, 0, resume=True)
    one_then_two = tmp_path / "one-then-two"
    run_in_process(one_then_two, 2, resume=False)
    run_two_processes(tmp_path, one_then_two, 0, resume=True)
    for out in (two_then_one, one_then_two):
        got = losses(out)
        assert [s for s, _, _ in got] == [3, 4]
        assert [loss for _, loss, _ in got] == pytest.approx([loss for _, loss, _ in reference], rel=1e-5)

    # another global batch is refused, naming the batch size that fits
    two = tmp_path / "two"
    run_two_processes(tmp_path, two, 2, resume=False)
    with pytest.raises(UserError, match=r"--batch-size 4 contradicts .* global batch of 8; here 4\): resume with "
                                        r"--batch-size 8"):
        train(tiny_model(), PatternData(), make_collate(0.0), out_dir=two, progress=False, resume=True,
              config=cfg(max_steps=6, batch_size=4, schedule="constant", log_every=3, save_every=2))
