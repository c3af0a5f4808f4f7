"""Reliability of a run folder: one writer (an OS lock), preemption-safe stops (SIGTERM / SIGINT),
checkpoints that heal, exact resume of the logging window, non-finite numbers, contradicting
resumes, checks before anything is written, file modes.

Signal and lock tests run a real training process: this file run as a script (``python
tests/test_reliability.py OUT PAUSE``) trains the tiny model of tests/test_train_loop.py with
the configuration below, a little slowed down so a test can act while it runs.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

import lmzoo.io

sys.path.insert(0, str(Path(__file__).parent))
from test_train_loop import Output, PatternData, TinyLM, cfg, losses, make_collate, tiny_model  # noqa: E402

from lmzoo.cli import main  # noqa: E402
from lmzoo.errors import UserError  # noqa: E402
from lmzoo.train import RunInterrupted, locked, read_metrics, train  # noqa: E402
from lmzoo.train import loop as loop_module  # noqa: E402
from lmzoo.train.lock import holds_lock  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# save_every is not a multiple of log_every: a resume must carry the open logging window
CHILD = dict(max_steps=24, save_every=7, log_every=4, schedule="cosine", warmup_steps=2)


def child_run(out: str | Path, *, resume: bool = False, pause: float = 0.0, batch_size: int = 16):
    """The run the child process trains (also run in-process, uninterrupted or resumed, and under
    torchrun with a batch of 8 per rank)."""
    collate = make_collate(0.15)

    def slow_collate(examples, generator):
        time.sleep(pause)
        return collate(examples, generator)

    torch.manual_seed(1)
    return train(tiny_model(dropout=0.2), PatternData(64), slow_collate, out_dir=out,
                 config=cfg(**CHILD, batch_size=batch_size), resume=resume, progress=False)


@functools.cache
def reference_losses(run: Callable[[Path], object]) -> list:
    """The logged (step, loss, lr) of ``run(folder)`` uninterrupted, trained once per session."""
    with tempfile.TemporaryDirectory() as folder:
        run(Path(folder) / "run")
        return losses(Path(folder) / "run")


def start_child(out: Path, pause: float) -> subprocess.Popen:
    # same thread settings as this process: the in-process runs must match the child bit for bit
    return subprocess.Popen([sys.executable, __file__, str(out), str(pause)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(out: Path, proc: subprocess.Popen, n: int, timeout: float = 60.0) -> None:
    """Until metrics.jsonl of ``out`` holds ``n`` records (the child is then inside the loop)."""
    deadline = time.monotonic() + timeout
    while len(read_metrics(out / "metrics.jsonl")) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.05)


def cli(capsys, *argv) -> tuple[int, str]:
    """``lmzoo ARGV`` in this process: (exit status, stderr)."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_corpus(path: Path, docs: int = 40) -> Path:
    words = "the cat sat on a mat and a dog ran far away while birds sang in tall trees".split()
    text = "\n\n".join("\n".join(" ".join(words[(d * 7 + s * 3 + i) % len(words)] for i in range(12)) + "."
                                 for s in range(5)) for d in range(docs))
    path.write_text(text)
    return path


# ---- one writer per folder ------------------------------------------------------------------


def test_second_writer_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path, capsys):
    out, corpus = tmp_path / "run", write_corpus(tmp_path / "corpus.txt")
    holder = start_child(out, pause=0.15)
    try:
        wait_for_steps(out, holder, 2)
        for flags in (["--overwrite"], ["--resume"], []):
            code, err = cli(capsys, "pretrain", "--preset", "gpt-tiny", "--out", out, "--data", corpus, *flags)
            assert code == 2
            assert err == f"error: {out} is in use by a running lmzoo process (pid {holder.pid})\n"
        with pytest.raises(UserError, match="in use by a running lmzoo process"):
            child_run(out)  # the library call is refused the same way
        assert holder.poll() is None
        holder.kill()  # SIGKILL: no handler runs, the kernel drops the lock
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == list(range(4, 4 * len(steps) + 1, 4))  # the holder's records alone, none doubled
    assert all(loop_module._checkpoint_problem(p)[0] is None for p in loop_module._checkpoints(out))
    assert (out / ".lmzoo.lock").exists()  # the killed holder's file stays, its lock does not
    with locked(out):
        pass


def test_lock_is_reentrant_in_one_process(tmp_path):
    with locked(tmp_path):
        with locked(tmp_path):
            assert (tmp_path / ".lmzoo.lock").read_text().strip() == str(os.getpid())
        assert (tmp_path / ".lmzoo.lock").exists()
    assert not (tmp_path / ".lmzoo.lock").exists()


# ---- signals --------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_whose_resume_is_exact(tmp_path, signum):
    out = tmp_path / "cut"
    handler = signal.getsignal(signal.SIGINT)  # the default, or SIG_IGN when pytest runs as a background job
    proc = start_child(out, pause=0.05)
    wait_for_steps(out, proc, 2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    stopped = int(checkpoints[-1][5:])
    assert 8 <= stopped < CHILD["max_steps"]  # saved at the stop (or at a save step just before it)
    lines = [line for line in err.splitlines() if "--resume" in line]
    assert lines == [f"{signal.Signals(signum).name}: stopped after step {stopped}; checkpoint "
                     f"{out / 'checkpoints' / checkpoints[-1]}; continue with the same command and --resume"]
    assert not (out / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # this process's handlers untouched
    result = child_run(out, resume=True)
    assert result.step == CHILD["max_steps"]
    assert reference_losses(child_run) == losses(out)  # loss and lr, exactly, step by step


TORCHRUN_WORKER = """
import os, sys, time, torch
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_reliability import child_run
Path({out!r}).parent.joinpath("pid-" + os.environ["RANK"]).write_text(str(os.getpid()))
child_run({out!r}, resume={resume}, pause=0.05, batch_size=8)
"""


def torchrun(tmp_path: Path, out: Path, *, resume: bool, wait: bool = True) -> subprocess.Popen:
    script = tmp_path / f"worker-{resume}.py"
    script.write_text(TORCHRUN_WORKER.format(tests=str(ROOT / "tests"), out=str(out), resume=resume))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                             str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        proc.communicate(timeout=300)
    return proc


@pytest.mark.slow
def test_torchrun_ranks_stop_after_the_same_step_when_one_gets_sigterm(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    full = torchrun(tmp_path / "a", tmp_path / "a" / "run", resume=False)
    assert full.returncode == 0, full.stderr[-3000:]
    out = tmp_path / "b" / "run"
    proc = torchrun(tmp_path / "b", out, resume=False, wait=False)
    wait_for_steps(out, proc, 2, timeout=120)
    os.kill(int((tmp_path / "b" / "pid-1").read_text()), signal.SIGTERM)  # rank 1 alone receives it
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if "continue with the same command and --resume" in line]
    assert len(lines) == 1 and lines[0].startswith("SIGTERM: stopped after step "), err[-3000:]
    stopped = int(lines[0].split("step ")[1].split(";")[0])
    state = json.loads((out / "checkpoints" / f"step-{stopped:08d}" / "trainer_state.json").read_text())
    assert state["step"] == stopped and len(state["rng"]) == len(state["window"]) == 2
    resumed = torchrun(tmp_path / "b", out, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path / "a" / "run") == losses(out)


def test_second_signal_stops_at_once_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with loop_module._StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # the first only asks
        with pytest.raises(RunInterrupted) as caught:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode; never reached
        assert caught.value.code == 130
    assert signal.getsignal(signal.SIGTERM) is before


# ---- checkpoints that heal ------------------------------------------------------------------


class Stop(Exception):
    pass


def stop_at(step: int):
    def hook(s, path):
        if s == step:
            raise Stop

    return hook


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def pickle_payload(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    path.write_bytes(pickle.dumps(Payload()))


DAMAGE = {
    "truncated weights": ("trainer_model.safetensors", truncate),
    "missing optimizer": ("optimizer.pt", Path.unlink),
    "missing weights": ("trainer_model.safetensors", Path.unlink),
    "bad trainer state": ("trainer_state.json", lambda p: p.write_text('{"step": ')),
    "pickle in optimizer": ("optimizer.pt", None),
    # valid JSON of the wrong shape: the generator states used to fail mid-resume with a TypeError
    "malformed rng state": ("trainer_state.json", lambda p: p.write_text('{"step": 6, "rng": [1]}')),
    "undecodable rng state": ("trainer_state.json", lambda p: p.write_text(
        json.dumps({**json.loads(p.read_text()), "rng": [{"torch": "AAAA", "numpy": [], "python": []}]}))),
}


HEAL = cfg(max_steps=8, save_every=2, log_every=3, keep_checkpoints=3)


def heal_run(out: Path, seed: int = 0, **kw):
    return train(tiny_model(seed=seed), PatternData(64), make_collate(0.1), out_dir=out, config=HEAL, progress=False, **kw)


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_skips_a_damaged_checkpoint(tmp_path, kind, capsys):
    out = tmp_path / "cut"
    with pytest.raises(Stop):
        heal_run(out, on_checkpoint=stop_at(6))
    name, damage = DAMAGE[kind]
    bad = out / "checkpoints" / "step-00000006" / name
    marker = tmp_path / "pwned"
    pickle_payload(bad, marker) if damage is None else damage(bad)
    capsys.readouterr()
    heal_run(out, seed=9, resume=True)  # other initial weights: all must come from the checkpoint
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"warning: checkpoint step-00000006 is damaged: {bad}: ")
    assert err[1] == f"resuming from {out / 'checkpoints' / 'step-00000004'} (step 4), the newest intact checkpoint"
    assert not marker.exists()  # the pickle was refused, never run
    assert reference_losses(heal_run) == losses(out)


def test_no_intact_checkpoint_is_one_error(tmp_path, capsys):
    conf = cfg(max_steps=4, save_every=2)
    train(tiny_model(), PatternData(64), make_collate(0.1), out_dir=tmp_path, config=conf, progress=False)
    for ckpt in (tmp_path / "checkpoints").iterdir():
        (ckpt / "optimizer.pt").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="no intact checkpoint in .*; start over with --overwrite"):
        train(tiny_model(), PatternData(64), make_collate(0.1), out_dir=tmp_path, config=conf, progress=False,
              resume=True)


def test_stale_temporary_folders_are_removed_and_rotation_renames_first(tmp_path, monkeypatch):
    train(tiny_model(), PatternData(64), make_collate(0.1), out_dir=tmp_path, config=cfg(max_steps=4, save_every=2),
          progress=False)
    # a rotation killed between its rename and its delete: the old checkpoint is no longer listed
    monkeypatch.setattr(lmzoo.io.shutil, "rmtree", lambda path, ignore_errors=False: None)
    train(tiny_model(), PatternData(64), make_collate(0.1), out_dir=tmp_path, config=cfg(max_steps=6, save_every=2),
          progress=False, resume=True)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "step-00000004", "step-00000006"]
    assert [p.name.split(".")[1:3] for p in (tmp_path / "checkpoints").glob(".*")] == [["step-00000002", "deleted"]]
    stale = [tmp_path / "checkpoints" / ".step-00000008.k2j3.tmp", tmp_path / ".final.x8c.tmp"]
    for folder in stale:  # runs killed while writing a checkpoint / the final model
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".metrics.jsonl.q1.tmp").write_text("torn")
    train(tiny_model(), PatternData(64), make_collate(0.1), out_dir=tmp_path, config=cfg(max_steps=8, save_every=2),
          progress=False, resume=True)
    assert [p.name for p in tmp_path.rglob(".*")] == []
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000006", "step-00000008"]


def test_a_full_disk_is_one_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real = loop_module.atomic_write_json

    def full(path, obj):
        if obj.get("step") == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, obj)

    monkeypatch.setattr(loop_module, "atomic_write_json", full)
    with pytest.raises(UserError, match=r"^no space left on the device writing .*trainer_state.json; the last "
                                        r"checkpoint .*step-00000002 is intact: free space, then run again"):
        train(tiny_model(), PatternData(64), make_collate(0.1), out_dir=tmp_path, progress=False,
              config=cfg(max_steps=6, save_every=2))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]


def test_a_real_full_disk_keeps_every_listed_checkpoint_intact(tmp_path):
    def run(out: Path, steps: int):
        torch.manual_seed(0)
        return train(TinyLM(dim=256), PatternData(64), make_collate(0.1), out_dir=out, progress=False,
                     config=cfg(max_steps=steps, save_every=2, log_every=2))

    run(tmp_path / "probe", 2)
    # room for two checkpoints and a half: the third one (keep_checkpoints=2 rotates after writing it) cannot fit
    size = sum(p.stat().st_size for p in (tmp_path / "probe" / "checkpoints").rglob("*") if p.is_file())
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(2.5 * size) // 4096 * 4096}", "tmpfs",
                              str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip() or 'mount failed'}")
    try:
        with pytest.raises(UserError, match="^no space left on the device writing .*: free space, then run again"):
            run(disk / "run", 20)
        listed = loop_module._checkpoints(disk / "run")
        assert listed and all(loop_module._checkpoint_problem(p)[0] is None for p in listed)
        assert not [p for p in (disk / "run").rglob(".*")]  # no temporary folder left behind
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: a failed run may still hold a file open


def test_a_disk_filled_by_the_optimizer_state_is_one_error(tmp_path):
    """torch.save's writer reports a full disk as a bare RuntimeError: optimizer.pt (twice the
    weights, the file most likely to fill a disk) must give the same one line as the weights do."""
    def run(out: Path, steps: int):
        torch.manual_seed(0)
        return train(TinyLM(dim=256), PatternData(64), make_collate(0.1), out_dir=out, progress=False,
                     config=cfg(max_steps=steps, save_every=2, log_every=2))

    run(tmp_path / "probe", 2)
    files = {p.name: p.stat().st_size for p in (tmp_path / "probe" / "checkpoints").rglob("*") if p.is_file()}
    assert files["optimizer.pt"] > files["model.safetensors"]
    disk = tmp_path / "disk"
    disk.mkdir()
    # every other file of the checkpoint fits (the weights are written first), the optimizer state not
    room = sum(size for name, size in files.items() if name != "optimizer.pt") + files["optimizer.pt"] // 2
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room // 4096 * 4096}", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip() or 'mount failed'}")
    try:
        with pytest.raises(UserError, match="^no space left on the device writing .*optimizer.pt; free space"):
            run(disk / "run", 4)
        assert not [p for p in (disk / "run").rglob(".*")]  # the half-written checkpoint is gone
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: a failed run may still hold a file open


# ---- exactness and numbers ------------------------------------------------------------------


def test_resume_logs_the_same_loss_when_save_every_is_not_a_multiple_of_log_every(tmp_path):
    conf = cfg(max_steps=20, save_every=7, log_every=5, eval_every=0)
    train(tiny_model(dropout=0.2), PatternData(64), make_collate(0.15), out_dir=tmp_path / "full", config=conf,
          progress=False)
    with pytest.raises(Stop):
        train(tiny_model(dropout=0.2), PatternData(64), make_collate(0.15), out_dir=tmp_path / "cut", config=conf,
              progress=False, on_checkpoint=stop_at(7))
    state = json.loads((tmp_path / "cut" / "checkpoints" / "step-00000007" / "trainer_state.json").read_text())
    assert state["window"][0]["steps"] == 2 and state["window"][0]["tokens"] == 2 * 16 * 12
    train(tiny_model(dropout=0.2), PatternData(64), make_collate(0.15), out_dir=tmp_path / "cut", config=conf,
          progress=False, resume=True)
    assert [s for s, _, _ in losses(tmp_path / "cut")] == [5, 10, 15, 20]
    assert losses(tmp_path / "full") == losses(tmp_path / "cut")


class Diverging(TinyLM):
    """TinyLM whose loss turns NaN on the batch flagged by the collator."""

    def forward(self, input_ids, labels=None, attention_mask=None, poison=None) -> Output:
        out = super().forward(input_ids, labels=labels, attention_mask=attention_mask)
        return Output(loss=out.loss * (math.nan if poison else 1.0), logits=out.logits)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    collate, calls = make_collate(0.0), []

    def poisoning(examples, generator):
        calls.append(1)
        return {**collate(examples, generator), "poison": len(calls) == 6}

    torch.manual_seed(0)
    with pytest.raises(UserError, match=r"non-finite at step 6; .* checkpoint is .*step-00000004"):
        train(Diverging(), PatternData(64), poisoning, out_dir=tmp_path, progress=False,
              config=cfg(max_steps=12, save_every=4, log_every=3))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000004"]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [3]
    assert not (tmp_path / "model.safetensors").exists()


# ---- contradicting resumes, checks before writing, modes ------------------------------------


def test_resume_with_contradicting_options_names_the_option(tmp_path, capsys):
    train(tiny_model(), PatternData(), make_collate(0.0), out_dir=tmp_path, config=cfg(max_steps=2), progress=False,
          run_signature={"seq_len": 12})
    before = snapshot(tmp_path)
    for conf, signature, flag in [(cfg(max_steps=4, batch_size=8), {"seq_len": 12}, "--batch-size 8"),
                                  (cfg(max_steps=4), {"seq_len": 24}, "--seq-len 24"),
                                  (cfg(max_steps=4, seed=4), {"seq_len": 12}, "--seed 4")]:
        with pytest.raises(UserError, match=f"^{flag} contradicts the checkpoint .*step-00000002"):
            train(tiny_model(), PatternData(), make_collate(0.0), out_dir=tmp_path, config=conf, progress=False,
                  resume=True, run_signature=signature)
    assert snapshot(tmp_path) == before
    locked_when_finalizing = []
    train(tiny_model(), PatternData(), make_collate(0.0), out_dir=tmp_path, config=cfg(max_steps=4), progress=False,
          resume=True, run_signature={"seq_len": 12}, finalize=lambda d: locked_when_finalizing.append(holds_lock(d)))
    assert "the lr schedule continues on the curve re-stretched to 4 steps" in capsys.readouterr().err
    assert locked_when_finalizing == [True] and not holds_lock(tmp_path)


def test_pretrain_checks_before_writing(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt")
    tiny = write_corpus(tmp_path / "tiny.txt", docs=3)
    (tmp_path / "a-file").write_text("mine")
    base = ["pretrain", "--preset", "gpt-tiny", "--vocab-size", 300, "--seq-len", 16, "--batch-size", 4,
            "--max-steps", 3, "--no-progress"]
    out = tmp_path / "out"
    cases = [
        (["--objective", "mlm", "--data", corpus, "--out", out], "objective mlm"),
        (["--data", corpus, "--out", out, "--seq-len", 100000], "exceeds the preset's max_positions"),
        (["--data", corpus, "--out", out, "--eval-fraction", "nan"], "--eval-fraction must be a number in (0, 1)"),
        (["--data", corpus, "--out", out, "--eval-fraction", 1.5], "--eval-fraction must be a number in (0, 1)"),
        (["--data", corpus, "--out", out, "--lr", "inf"], "lr must be a finite number"),
        (["--data", tmp_path / "missing.txt", "--out", out], "missing.txt"),
        (["--data", tiny, "--out", out, "--batch-size", 64], "corpus too small"),
        (["--data", corpus, "--out", tmp_path / "a-file"], "is a file"),
        (["--data", corpus, "--out", out, "--resume"], f"nothing to resume: {out} does not exist"),
    ]
    for extra, message in cases:
        code, err = cli(capsys, *base, *extra)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, (extra, err)
        assert not out.exists(), (extra, list(out.iterdir()))
    assert (tmp_path / "a-file").read_text() == "mine"
    # a run killed before its first checkpoint: its tokenizer is there, no checkpoint
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")
    code, err = cli(capsys, *base, "--data", corpus, "--out", out, "--resume")
    assert code == 2 and err == (f"error: nothing to resume: {out} holds no checkpoint yet (the run stopped before "
                                 "its first one); start over with --overwrite\n")
    assert snapshot(out) == {"tokenizer.json": b"{}"}


def test_pretrain_resume_contradiction_and_file_modes(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "run"
    base = ["pretrain", "--preset", "gpt-tiny", "--vocab-size", 300, "--batch-size", 4, "--no-progress",
            "--data", corpus, "--out", out, "--eval-fraction", 0.1]
    assert cli(capsys, *base, "--seq-len", 16, "--max-steps", 2)[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    for p in [out, *out.rglob("*")]:
        expected = (0o777 if p.is_dir() else 0o666) & ~umask
        assert p.stat().st_mode & 0o777 == expected, (p, oct(p.stat().st_mode))
    before = snapshot(out)
    code, err = cli(capsys, *base, "--seq-len", 32, "--max-steps", 4, "--resume")
    assert code == 2 and err.startswith("error: --seq-len 32 contradicts the checkpoint "), err
    code, err = cli(capsys, *base, "--seq-len", 16, "--max-steps", 4, "--resume", "--batch-size", 2)
    assert code == 2 and err.startswith("error: --batch-size 2 contradicts the checkpoint "), err
    assert snapshot(out) == before


if __name__ == "__main__":  # the child run of the signal and lock tests: OUT PAUSE
    child_run(sys.argv[1], pause=float(sys.argv[2]))


def test_json_files_are_strict_json_with_null_for_a_score_that_overflowed(tmp_path):
    """`lmzoo eval --json` of text with few spaces has an infinite word perplexity: the file says
    null, which strict JSON readers (JavaScript, jq) accept; Infinity and NaN they refuse."""
    import math

    from lmzoo.io import atomic_write_json

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    atomic_write_json(tmp_path / "scores.json", {"word_perplexity": math.inf, "loss": 1.5,
                                                 "rows": [math.nan, 2.0, {"x": -math.inf}], "steps": (1, 2)})
    text = (tmp_path / "scores.json").read_text()
    assert json.loads(text, parse_constant=refuse) == {"word_perplexity": None, "loss": 1.5,
                                                       "rows": [None, 2.0, {"x": None}], "steps": [1, 2]}


def test_pretrain_never_writes_into_a_model_the_input_or_another_kind_of_run(tmp_path, capsys):
    """Refused before anything is written, in one line each: a model folder that holds no run
    (fresh or --resume: --overwrite would delete it), the --model folder itself, a run of another
    architecture, a --max-steps below the checkpoint's, an empty --out."""
    import shutil

    corpus = write_corpus(tmp_path / "corpus.txt")
    common = ["--seq-len", 16, "--batch-size", 4, "--save-every", 2, "--no-progress", "--data", corpus]
    gpt = ["pretrain", "--preset", "gpt-tiny", "--vocab-size", 300, "--max-steps", 2, *common]
    run = tmp_path / "run"
    assert cli(capsys, *gpt, "--out", run)[0] == 0
    model = tmp_path / "model"
    model.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):  # weights without a config.json
        shutil.copy(run / name, model)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\n" + "".join(f"the cat sat {i},{'ab'[i % 2]}\n" for i in range(8)))
    kept, run_kept = snapshot(model), snapshot(run)
    cases = [
        ([*gpt, "--out", model], "already holds a model (model.safetensors); pass --overwrite"),
        ([*gpt, "--out", model, "--resume"], "holds no run but a model (model.safetensors); choose another --out"),
        (["pretrain", "--model", run, "--max-steps", 2, *common, "--out", run], "is the --model folder"),
        (["pretrain", "--model", run, "--max-steps", 2, *common, "--out", run, "--overwrite"], "is the --model folder"),
        (["finetune", "--task", "classify", "--model", copy, "--train", labelled, "--max-steps", 2, "--out", run,
          "--resume", "--no-progress"], "holds a run that trains a GPT2LMHeadModel, not a GPT2ForSequenceClassification"),
        ([*gpt, "--out", run, "--resume", "--max-steps", 1], "--max-steps 1 is below the step of the checkpoint"),
        ([*gpt, "--out", ""], "--out is empty"),
    ]
    for argv, message in cases:
        code, err = cli(capsys, *argv)
        last = err.splitlines()[-1]  # finetune notes the head it creates first
        assert code == 2 and last.startswith("error: ") and message in last and "error" not in err[:-len(last)], err
    assert snapshot(model) == kept and snapshot(run) == run_kept


def test_overwrite_removes_the_old_runs_task_files(tmp_path, capsys):
    """A seq2seq fine-tuning's saved prefix left beside a new model would be prepended by text2text."""
    corpus = write_corpus(tmp_path / "corpus.txt")
    argv = ["pretrain", "--preset", "gpt-tiny", "--vocab-size", 300, "--seq-len", 16, "--batch-size", 4,
            "--max-steps", 1, "--no-progress", "--data", corpus, "--out", tmp_path / "run"]
    assert cli(capsys, *argv)[0] == 0
    for name in ("lmzoo_seq2seq.json", "lmzoo_task.json", "generation_config.json"):
        (tmp_path / "run" / name).write_text('{"prefix": "translate to pirate: "}')
    assert cli(capsys, *argv, "--overwrite")[0] == 0
    assert not {"lmzoo_seq2seq.json", "lmzoo_task.json", "generation_config.json"} & {
        p.name for p in (tmp_path / "run").iterdir()}
