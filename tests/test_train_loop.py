"""The training loop on a tiny next-token model: learning, schedule, accumulation, checkpoints, resume."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn
from torch.nn import functional as F

from lmzoo.errors import UserError
from lmzoo.train import TrainConfig, lr_factor, read_metrics, train
from lmzoo.train import loop as loop_module

VOCAB, SEQ, MASK_ID = 16, 12, 0


# ---- a tiny model, data set and collator shared with tests/test_ddp.py ------------------------


@dataclass
class Output:
    loss: torch.Tensor
    logits: torch.Tensor


class TinyLM(nn.Module):
    """Embedding -> (dropout) -> MLP -> vocab, predicting the next token (tied output embedding)."""

    def __init__(self, dropout: float = 0.0, dim: int = 32) -> None:
        super().__init__()
        self.config = {"vocab_size": VOCAB, "dim": dim, "dropout": dropout}
        self.embed = nn.Embedding(VOCAB, dim)
        self.hidden = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, VOCAB)
        self.head.weight = self.embed.weight  # tied, like the real models

    def forward(self, input_ids, labels=None, attention_mask=None) -> Output:
        h = self.norm(torch.tanh(self.hidden(self.drop(self.embed(input_ids)))))
        logits = self.head(h)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
        return Output(loss=loss, logits=logits)

    def save_pretrained(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config))
        safetensors.torch.save_model(self, str(folder / "model.safetensors"))


class PatternData:
    """Item i: a sequence following x -> (3x + 1) mod VOCAB (skipping 0, the mask id) from a start fixed by i."""

    def __init__(self, n: int = 256) -> None:
        self.n = n
        self.epochs_seen: list[int] = []

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)

    def __getitem__(self, i: int) -> dict:
        x, seq = 1 + (i * 7) % (VOCAB - 1), []
        for _ in range(SEQ):
            seq.append(x)
            x = 1 + (3 * x + 1) % (VOCAB - 1)
        return {"input_ids": torch.tensor(seq)}


def make_collate(mask_prob: float):
    """Stack; replace a random fraction of inputs with MASK_ID (randomness only from `generator`)."""

    def collate(examples, generator):
        ids = torch.stack([e["input_ids"] for e in examples])
        masked = torch.rand(ids.shape, generator=generator) < mask_prob
        return {"input_ids": ids.masked_fill(masked, MASK_ID), "labels": ids, "attention_mask": torch.ones_like(ids)}

    return collate


def accuracy_fn(batch, output):
    pred = output.logits[:, :-1].argmax(-1)
    return {"next_correct": float((pred == batch["labels"][:, 1:]).sum()), "next_total": float(pred.numel())}


def tiny_model(dropout: float = 0.0, seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(dropout)


def losses(out_dir) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["lr"]) for r in read_metrics(Path(out_dir) / "metrics.jsonl") if "loss" in r]


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=10, batch_size=16, lr=1e-2, warmup_steps=0, log_every=1, seed=3)
    return TrainConfig(**{**base, **kw})


# ---- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    dict(max_steps=-1), dict(max_steps=0), dict(lr=0.0), dict(schedule="step"), dict(precision="fp16"),
    dict(grad_accum=0), dict(min_lr_ratio=1.5), dict(clip_norm=0.0), dict(keep_checkpoints=0),
    dict(save_every=-2), dict(betas=(0.9, 1.0)), dict(lr=math.inf), dict(lr=math.nan), dict(clip_norm=math.nan),
    dict(clip_norm=math.inf), dict(weight_decay=math.inf), dict(eps=math.nan), dict(min_lr_ratio=math.nan),
    dict(betas=(math.nan, 0.9)), dict(lr="1e-3"),
])
def test_config_rejects_invalid_values(bad):
    with pytest.raises(UserError):
        TrainConfig(**{"max_steps": 10, **bad})


def test_loss_falls_and_run_files(tmp_path):
    model = tiny_model()
    result = train(model, PatternData(), make_collate(0.0), out_dir=tmp_path, eval_data=PatternData(64),
                   metrics_fn=accuracy_fn, config=cfg(max_steps=60, log_every=5, eval_every=30), progress=False)
    log = losses(tmp_path)
    assert [s for s, _, _ in log] == list(range(5, 61, 5))
    assert log[-1][1] < 0.2 * log[0][1]
    assert result.step == 60 and result.train_loss == log[-1][1]
    assert result.eval_metrics["next_accuracy"] > 0.95  # the pattern is deterministic
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [30, 60] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert all(r["tokens_per_s"] > 0 for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r)
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The final model lies in out_dir (save_pretrained) and equals the trained weights.
    assert json.loads((tmp_path / "config.json").read_text())["dim"] == 32
    reloaded = TinyLM()
    safetensors.torch.load_model(reloaded, str(tmp_path / "model.safetensors"))
    assert torch.equal(reloaded.hidden.weight, model.hidden.weight)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_lr_schedule_values(tmp_path):
    lin = cfg(max_steps=20, warmup_steps=4, schedule="linear", min_lr_ratio=0.1)
    assert lr_factor(lin, 0) == pytest.approx(1 / 5)
    assert lr_factor(lin, 3) == pytest.approx(4 / 5)
    assert lr_factor(lin, 4) == pytest.approx(1.0)
    assert lr_factor(lin, 12) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(lin, 20) == pytest.approx(0.1)
    cos = cfg(max_steps=20, warmup_steps=4, schedule="cosine")
    assert lr_factor(cos, 8) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(cos, 12) == pytest.approx(0.5)
    assert lr_factor(cos, 20) == pytest.approx(0.0)
    const = cfg(max_steps=20, warmup_steps=2, schedule="constant")
    assert [lr_factor(const, s) for s in (0, 1, 2, 19)] == pytest.approx([1 / 3, 2 / 3, 1, 1])
    # The optimizer really uses these values: the logged lr of step s is lr * factor(s - 1).
    train(tiny_model(), PatternData(), make_collate(0.0), out_dir=tmp_path, config=cos, progress=False)
    logged = {s: lr for s, _, lr in losses(tmp_path)}
    for s in (1, 4, 5, 9, 13, 20):
        assert logged[s] == pytest.approx(cos.lr * lr_factor(cos, s - 1), rel=1e-12)


def test_grad_accumulation_matches_big_batch(tmp_path):
    big, small = tiny_model(), tiny_model()
    train(big, PatternData(), make_collate(0.0), out_dir=tmp_path / "a", progress=False,
          config=cfg(max_steps=6, batch_size=32, grad_accum=1))
    train(small, PatternData(), make_collate(0.0), out_dir=tmp_path / "b", progress=False,
          config=cfg(max_steps=6, batch_size=16, grad_accum=2))
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [s for s, _, _ in la] == [s for s, _, _ in lb] == list(range(1, 7))
    assert la[-1][1] < la[0][1]
    for (_, x, _), (_, y, _) in zip(la, lb):
        assert y == pytest.approx(x, rel=1e-5)
    for p, q in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class Stop(Exception):
    pass


def test_resume_reproduces_uninterrupted_run_exactly(tmp_path):
    conf = cfg(max_steps=12, save_every=4, eval_every=4, schedule="cosine", warmup_steps=2)
    collate = make_collate(0.15)
    full = tiny_model(dropout=0.2)
    torch.manual_seed(1)
    train(full, PatternData(64), collate, out_dir=tmp_path / "full", eval_data=PatternData(32), config=conf,
          metrics_fn=accuracy_fn, progress=False)

    def kill_at_8(step, path):
        if step == 8:
            raise Stop

    killed = tiny_model(dropout=0.2)
    torch.manual_seed(1)
    with pytest.raises(Stop):
        train(killed, PatternData(64), collate, out_dir=tmp_path / "cut", eval_data=PatternData(32), config=conf,
              metrics_fn=accuracy_fn, on_checkpoint=kill_at_8, progress=False)
    # A stale metrics line past the checkpoint (as if the kill came later) must be dropped on resume.
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 9, "loss": 123.0, "lr": 0.0}) + "\n")
    torch.manual_seed(999)  # a different RNG state and a fresh model: everything must come from the checkpoint
    resumed = tiny_model(dropout=0.2, seed=5)
    data = PatternData(64)
    result = train(resumed, data, collate, out_dir=tmp_path / "cut", eval_data=PatternData(32), config=conf,
                   metrics_fn=accuracy_fn, resume=True, progress=False)
    assert result.step == 12
    assert data.epochs_seen == [2]  # 64 examples / 16 = 4 batches per epoch: step 8 starts epoch 2

    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert [s for s, _, _ in b] == list(range(1, 13))
    assert a == b  # exact float equality, step by step (loss and lr)
    evals = lambda d: [r for r in read_metrics(d / "metrics.jsonl") if "eval_loss" in r]
    assert evals(tmp_path / "full") == evals(tmp_path / "cut")
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    # Dropout is really active (the test would be weak otherwise): two train-mode passes differ.
    x = torch.arange(1, 13).unsqueeze(0)
    assert not torch.equal(full(x, labels=x).logits, full(x, labels=x).logits)


def test_a_seed_gives_the_same_run_whatever_the_global_rng_state(tmp_path):
    """Dropout draws from the global generator; the loop seeds it from the run's seed, so two runs with
    one seed in one process (the Python API, probes, compare) train the same weights, another seed not."""
    runs = []
    for name, global_seed, seed in (("a", 1, 3), ("b", 999, 3), ("c", 1, 4)):
        model = tiny_model(dropout=0.2)
        torch.manual_seed(global_seed)
        train(model, PatternData(64), make_collate(0.0), out_dir=tmp_path / name, config=cfg(max_steps=4, seed=seed),
              progress=False)
        runs.append(list(model.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(runs[0], runs[1]))
    assert not all(torch.equal(p, q) for p, q in zip(runs[0], runs[2]))


def test_checkpoint_retention_and_contents(tmp_path):
    train(tiny_model(), PatternData(), make_collate(0.1), out_dir=tmp_path, progress=False,
          config=cfg(max_steps=10, save_every=2, keep_checkpoints=3))
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step-00000006", "step-00000008", "step-00000010"]
    last = tmp_path / "checkpoints" / "step-00000010"
    assert {p.name for p in last.iterdir()} == {
        "config.json", "model.safetensors", "trainer_model.safetensors", "optimizer.pt", "scheduler.pt",
        "trainer_state.json"}
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 10 and state["epoch"] == 0 and state["config"]["save_every"] == 2
    assert math.isfinite(state["train_loss"]) and len(state["rng"]) == 1
    opt = torch.load(last / "optimizer.pt", weights_only=True)
    assert all(s["step"] == 10 for s in opt["state"].values())


def test_checkpoint_is_complete_or_absent(tmp_path, monkeypatch):
    real = loop_module.atomic_write_json

    def failing(path, obj):
        if obj.get("step") == 4:
            raise OSError("disk full")
        real(path, obj)

    monkeypatch.setattr(loop_module, "atomic_write_json", failing)
    with pytest.raises(OSError, match="disk full"):
        train(tiny_model(), PatternData(), make_collate(0.1), out_dir=tmp_path, progress=False,
              config=cfg(max_steps=6, save_every=2))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000002"]  # no half folder, no temp
    monkeypatch.setattr(loop_module, "atomic_write_json", real)
    result = train(tiny_model(), PatternData(), make_collate(0.1), out_dir=tmp_path, progress=False,
                   config=cfg(max_steps=6, save_every=2), resume=True)
    assert result.step == 6 and [s for s, _, _ in losses(tmp_path)] == list(range(1, 7))


def test_refuses_existing_run_and_overwrite(tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        train(tiny_model(), PatternData(), make_collate(0.0), out_dir=tmp_path, config=cfg(max_steps=2),
              resume=True, progress=False)
    train(tiny_model(), PatternData(), make_collate(0.0), out_dir=tmp_path, config=cfg(max_steps=4),
          progress=False)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(UserError, match="already holds a run; pass --resume or --overwrite"):
        train(tiny_model(), PatternData(), make_collate(0.0), out_dir=tmp_path, config=cfg(max_steps=3),
              progress=False)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written
    (tmp_path / "notes.txt").write_text("keep me")
    train(tiny_model(), PatternData(), make_collate(0.0), out_dir=tmp_path, config=cfg(max_steps=3),
          overwrite=True, progress=False)
    assert [s for s, _, _ in losses(tmp_path)] == [1, 2, 3]  # the old run's records are gone
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_bf16_autocast_learns_with_fp32_weights(tmp_path):
    model = tiny_model()
    train(model, PatternData(), make_collate(0.0), out_dir=tmp_path, progress=False,
          config=cfg(max_steps=40, precision="bf16", log_every=5))
    log = losses(tmp_path)
    assert log[-1][1] < 0.3 * log[0][1]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_too_small_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="fewer than one batch"):
        train(tiny_model(), PatternData(8), make_collate(0.0), out_dir=tmp_path, config=cfg(), progress=False)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resume_with_longer_max_steps_follows_the_new_schedule(tmp_path):
    train(tiny_model(), PatternData(), make_collate(0.0), out_dir=tmp_path, progress=False,
          config=cfg(max_steps=4, schedule="linear"))
    longer = cfg(max_steps=8, schedule="linear")
    train(tiny_model(), PatternData(), make_collate(0.0), out_dir=tmp_path, progress=False, config=longer, resume=True)
    logged = {s: lr for s, _, lr in losses(tmp_path)}
    assert logged[4] == pytest.approx(1e-2 * 0.25)  # the first run's curve, decaying to 0 at step 4
    assert [logged[s] for s in range(5, 9)] == pytest.approx([1e-2 * lr_factor(longer, s - 1) for s in range(5, 9)])
    assert logged[5] == pytest.approx(1e-2 * 0.5)
