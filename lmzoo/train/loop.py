"""The one training loop: every family, pretraining and fine-tuning.

AdamW + warmup/decay schedule, gradient accumulation, clipping, bf16 autocast, periodic eval,
atomic checkpoints with exact resume, DDP / FSDP2 under torchrun.

Determinism is by construction, so a resumed run replays the uninterrupted one exactly:
- the data position is a pure function of the global step (epoch permutation seeded by
  (seed, epoch), rank shard ``indices[rank::world]``, drop-last micro-batches);
- the collator's generator is seeded by (seed, step, micro-step, rank);
- the torch / numpy / python RNG states (dropout) are saved in every checkpoint, per rank.

metrics_fn convention: ``metrics_fn(batch, output) -> {name: sum}``; the sums are added over eval
batches; a pair ``X_correct`` / ``X_total`` is reported as ``X_accuracy = correct / total``; any
other key is reported as its total.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import safetensors.torch
import torch
from torch import nn

from lmzoo.errors import UserError
from lmzoo.io import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text
from lmzoo.train.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_sum,
    barrier,
    reshard,
    set_grad_sync,
    setup_distributed,
    teardown_distributed,
    wrap_model,
)

SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
# Files a run writes into out_dir (and --overwrite removes).
RUN_FILES = ("metrics.jsonl", "loss_curve.png", "config.json", "model.safetensors")
EVAL_SEED = 1234


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyperparameters of one run. ``batch_size`` is per process and per micro-step, so the
    global batch is ``world_size * batch_size * grad_accum`` examples."""

    max_steps: int
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 0
    schedule: str = "linear"  # after warmup: "linear" | "cosine" | "constant"
    min_lr_ratio: float = 0.0
    clip_norm: float | None = 1.0
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; weights stay fp32)
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 20
    log_every: int = 10
    save_every: int = 0  # 0 = only at the end
    keep_checkpoints: int = 2
    seed: int = 0
    compile: bool = False
    fsdp: bool = False

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise UserError(message)

        for name in ("max_steps", "batch_size", "grad_accum", "eval_batches", "log_every", "keep_checkpoints"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "seed"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 0, f"{name} must be an integer >= 0, got {value!r}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two values in [0, 1), got {self.betas}")
        check(self.eps > 0, f"eps must be > 0, got {self.eps}")
        check(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check(self.clip_norm is None or self.clip_norm > 0, f"clip_norm must be > 0 or None, got {self.clip_norm}")
        check(self.precision in PRECISIONS, f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")


@dataclass
class TrainResult:
    """``train_loss``: mean loss over the last logging window; ``eval_metrics``: the last evaluation."""

    step: int
    train_loss: float
    eval_metrics: dict[str, float] = field(default_factory=dict)
    out_dir: Path = Path(".")


# ---------------------------------------------------------------------------------------------
# Schedule, optimizer, seeds


def lr_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of ``config.lr`` for the optimizer step ``step`` (0-based).

    Warmup: (step + 1) / (warmup_steps + 1); then linear or cosine decay from 1 to
    ``min_lr_ratio`` at ``max_steps`` (or constant 1).
    """
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    if config.schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * decay


def build_optimizer(model: nn.Module, config: TrainConfig, *, allow_fused: bool = True) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm weights (parameters with ndim < 2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    kwargs = dict(lr=config.lr, betas=tuple(config.betas), eps=config.eps)
    if allow_fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):
            pass  # fused kernel unsupported for this device / dtype: fall back to the default
    return torch.optim.AdamW(groups, **kwargs)


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from a tuple (same value on every machine and Python version)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _generator(*parts: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


# ---------------------------------------------------------------------------------------------
# Data order: a pure function of (seed, global micro-step index, rank)


class _Sampler:
    """Which dataset indices form micro-batch ``m`` of this rank (epoch-wise permutations, drop-last)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_epoch = (n // world) // batch_size
        if self.per_epoch == 0:
            raise UserError(
                f"training data has {n} examples, fewer than one batch ({batch_size} x {world} processes)")
        self._epoch, self._shard = -1, []

    def indices(self, micro_index: int) -> tuple[int, list[int]]:
        epoch, within = divmod(micro_index, self.per_epoch)
        if epoch != self._epoch:
            perm = torch.randperm(self.n, generator=_generator(self.seed, "epoch", epoch)).tolist()
            self._epoch, self._shard = epoch, perm[self.rank :: self.world]
        return epoch, self._shard[within * self.batch_size : (within + 1) * self.batch_size]


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _count_tokens(batch: Mapping[str, Any]) -> int:
    if isinstance(batch.get("attention_mask"), torch.Tensor):
        return int(batch["attention_mask"].sum())
    if isinstance(batch.get("input_ids"), torch.Tensor):
        return batch["input_ids"].numel()
    return 0


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ---------------------------------------------------------------------------------------------
# RNG states, serialised as JSON-safe values (never pickled)


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_version, list(py_internal), py_gauss],
    }
    if device.type == "cuda":
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state(device).numpy().tobytes()).decode()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["cuda"])), dtype=torch.uint8), device)


# ---------------------------------------------------------------------------------------------
# Files of a run


def _checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders start with '.' and are skipped)."""
    folder = out_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "trainer_state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _holds_run(out_dir: Path) -> bool:
    return (out_dir / "metrics.jsonl").exists() or (out_dir / "checkpoints").exists()


def _remove_run(out_dir: Path) -> None:
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line from a crash is skipped)."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_loss_curve(metrics_path: Path, png_path: Path) -> None:
    """Train loss and eval loss vs step, as a PNG written atomically (Agg canvas, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(png_path, buf.getvalue())


def _save_weights(model: nn.Module, folder: Path) -> None:
    """HF folder via save_pretrained when the model has it, plus the loop's exact copy for resume."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
        safetensors.torch.save_model(model, str(folder / "trainer_model.safetensors"))
    else:
        safetensors.torch.save_model(model, str(folder / "model.safetensors"))


def _weights_file(folder: Path) -> Path:
    exact = folder / "trainer_model.safetensors"
    return exact if exact.exists() else folder / "model.safetensors"


def _save_final_model(model: nn.Module, out_dir: Path) -> None:
    """config.json + model.safetensors into out_dir: written in a temp folder, then renamed file by file."""
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".final.", suffix=".tmp"))
    try:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp)
        else:
            safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
        for f in sorted(tmp.iterdir()):
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Model-state access that also works under FSDP2 (sharded DTensor parameters)


class _Weights:
    """Saves / loads the model and optimizer; under FSDP, through full (gathered) state dicts."""

    def __init__(self, model: nn.Module, info: DistInfo, fsdp: bool) -> None:
        self.model, self.info, self.fsdp = model, info, fsdp and info.distributed
        # Under FSDP rank 0 keeps an unsharded CPU copy to write safetensors / save_pretrained from.
        self.shell = copy.deepcopy(model).cpu() if self.fsdp and info.is_main else None

    def unsharded(self) -> nn.Module | None:
        """The model with full weights on rank 0 (None elsewhere); a collective under FSDP."""
        if not self.fsdp:
            return self.model if self.info.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.info.is_main:
            return None
        self.shell.load_state_dict(full)
        return self.shell

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            self.model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, optimizer, state, options=StateDictOptions(full_state_dict=True))


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    eval_data,
    collate: Callable,
    *,
    batch_size: int,
    max_batches: int,
    device: torch.device,
    precision: str = "fp32",
    metrics_fn: Callable | None = None,
) -> dict[str, float]:
    """Mean loss (weighted by examples per batch) over the first ``max_batches`` batches in order.

    Every batch's collator generator has a fixed seed, so masks are the same at every eval.
    Returns ``{"eval_loss": ..., "<name>_accuracy": ..., ...}`` (see the module docstring).
    """
    was_training = model.training
    model.eval()
    loss_sum, n_examples = 0.0, 0
    sums: dict[str, float] = {}
    n_batches = min(max_batches, math.ceil(len(eval_data) / batch_size))
    for b in range(n_batches):
        examples = [eval_data[i] for i in range(b * batch_size, min(len(eval_data), (b + 1) * batch_size))]
        batch = _to_device(collate(examples, _generator(EVAL_SEED, b)), device)
        with _autocast(device, precision):
            output = model(**batch)
        loss_sum += float(output.loss) * len(examples)
        n_examples += len(examples)
        if metrics_fn is not None:
            for k, v in metrics_fn(batch, output).items():
                sums[k] = sums.get(k, 0.0) + float(v)
    model.train(was_training)
    result = {"eval_loss": loss_sum / max(1, n_examples)}
    for k, v in sums.items():
        if k.endswith("_correct") and k[: -len("_correct")] + "_total" in sums:
            name = k[: -len("_correct")]
            result[f"{name}_accuracy"] = v / max(1.0, sums[f"{name}_total"])
        elif not (k.endswith("_total") and k[: -len("_total")] + "_correct" in sums):
            result[k] = v
    return result


# ---------------------------------------------------------------------------------------------
# The loop


def train(
    model: nn.Module,
    train_data,
    collate: Callable,
    *,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    eval_data=None,
    metrics_fn: Callable | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``train_data`` for ``config.max_steps`` optimizer steps.

    ``model(**batch)`` must return an object with a scalar ``.loss``. ``collate(examples, generator)``
    builds a batch, drawing all randomness from ``generator``. ``on_checkpoint(step, path)`` runs on
    every rank after each checkpoint is in place (an exception there stops the run, like a kill).
    Under torchrun the run is data-parallel (DDP, or FSDP2 with ``config.fsdp``); rank 0 writes files.
    """
    from lmzoo.quantize import refuse_if_quantized

    refuse_if_quantized(model, "train")
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise UserError("pass either --resume or --overwrite, not both")
    info = setup_distributed()
    try:
        return _train(model, train_data, collate, out_dir, config, eval_data, metrics_fn, resume,
                      overwrite, on_checkpoint, progress, info)
    finally:
        teardown_distributed(info)


def _train(model, train_data, collate, out_dir: Path, config: TrainConfig, eval_data, metrics_fn, resume,
           overwrite, on_checkpoint, progress, info: DistInfo) -> TrainResult:
    # Refuse before anything is written, on every rank (same file system), then let rank 0 clean up.
    if _holds_run(out_dir) and not (resume or overwrite):
        raise UserError(f"{out_dir} already holds a run; pass --resume or --overwrite")
    checkpoint = None
    if resume:
        found = _checkpoints(out_dir)
        if not found:
            raise UserError(f"nothing to resume: {out_dir / 'checkpoints'} holds no checkpoint")
        checkpoint = found[-1]
    sampler = _Sampler(len(train_data), config.batch_size, config.seed, info.rank, info.world_size)
    barrier(info)
    if info.is_main:
        if overwrite:
            _remove_run(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    barrier(info)

    device = info.device
    metrics_path = out_dir / "metrics.jsonl"
    raw = model.to(device)
    step, state = 0, None
    if checkpoint is not None:
        # Weights go into the bare model before wrapping; DDP/FSDP then see the resumed values.
        safetensors.torch.load_model(raw, str(_weights_file(checkpoint)), device=str(device))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        step = int(state["step"])
        if info.is_main:  # drop metrics logged after the checkpoint (the resumed run re-logs them)
            kept = [r for r in read_metrics(metrics_path) if r.get("step", 0) <= step]
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    weights = _Weights(raw, info, config.fsdp)
    fwd = torch.compile(raw) if config.compile else raw
    fwd = wrap_model(fwd, info, fsdp=config.fsdp)
    optimizer = build_optimizer(raw, config, allow_fused=not weights.fsdp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s))
    if checkpoint is not None:
        weights.load_optimizer_state(optimizer, torch.load(checkpoint / "optimizer.pt", weights_only=True, map_location=device))
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
        # The schedule is a function of the step: re-derive it from this run's config, so a resume
        # with a longer max_steps (or another lr) continues on the new curve, not the saved lr.
        scheduler.base_lrs = [config.lr] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["initial_lr"] = config.lr
            group["lr"] = config.lr * lr_factor(config, step)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        rngs = state["rng"]
        _set_rng_state(rngs[info.rank % len(rngs)], device)

    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, initial=step, desc="train", dynamic_ncols=True)

    window_loss = torch.zeros((), dtype=torch.float64, device=device)
    window_tokens, window_steps, window_start = 0, 0, time.perf_counter()
    train_loss = float(state["train_loss"]) if state and state.get("train_loss") is not None else float("nan")
    eval_metrics: dict[str, float] = {}
    last_epoch = None
    last_eval = last_save = step if checkpoint is not None else -1

    def run_eval() -> None:
        nonlocal eval_metrics, last_eval
        eval_metrics = evaluate(fwd, eval_data, collate, batch_size=config.batch_size,
                                max_batches=config.eval_batches, device=device,
                                precision=config.precision, metrics_fn=metrics_fn)
        if weights.fsdp:
            reshard(fwd)
        last_eval = step
        if info.is_main:
            _append_metrics(metrics_path, {"step": step, **eval_metrics})
            if bar is not None:
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))

    def save_checkpoint() -> None:
        nonlocal last_save
        path = out_dir / "checkpoints" / f"step-{step:08d}"
        rngs = all_gather_object(info, _rng_state(device))
        opt_state = weights.optimizer_state(optimizer)
        full_model = weights.unsharded()
        if info.is_main:
            with atomic_directory(path) as tmp:
                _save_weights(full_model, tmp)
                torch.save(opt_state, tmp / "optimizer.pt")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                atomic_write_json(tmp / "trainer_state.json", {
                    "step": step,
                    "epoch": step * config.grad_accum // sampler.per_epoch,
                    "train_loss": None if math.isnan(train_loss) else train_loss,
                    "world_size": info.world_size,
                    "config": dataclasses.asdict(config),
                    "rng": rngs,
                })
            for old in _checkpoints(out_dir)[: -config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        barrier(info)
        last_save = step
        if on_checkpoint is not None:
            on_checkpoint(step, path)

    fwd.train()
    while step < config.max_steps:
        for micro in range(config.grad_accum):
            epoch, idx = sampler.indices(step * config.grad_accum + micro)
            if epoch != last_epoch and hasattr(train_data, "set_epoch"):
                train_data.set_epoch(epoch)
            last_epoch = epoch
            examples = [train_data[i] for i in idx]
            batch = collate(examples, _generator(config.seed, "collate", step, micro, info.rank))
            window_tokens += _count_tokens(batch)
            batch = _to_device(batch, device)
            # Gradients are all-reduced across ranks only on the last micro-step.
            with set_grad_sync(fwd, micro == config.grad_accum - 1):
                with _autocast(device, config.precision):
                    loss = fwd(**batch).loss / config.grad_accum
                loss.backward()
            window_loss += loss.detach().double()
        if config.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(raw.parameters(), config.clip_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_steps += 1
        if bar is not None:
            bar.update(1)

        if step % config.log_every == 0 or step == config.max_steps:
            loss_sum, tokens = all_reduce_sum(info, [float(window_loss), float(window_tokens)])
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            train_loss = loss_sum / info.world_size / window_steps
            record = {"step": step, "loss": train_loss, "lr": lr, "tokens_per_s": tokens / elapsed}
            if info.is_main:
                _append_metrics(metrics_path, record)
                if bar is not None:
                    bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens / elapsed:.0f}")
            window_loss.zero_()
            window_tokens, window_steps, window_start = 0, 0, time.perf_counter()
        if eval_data is not None and config.eval_every and step % config.eval_every == 0:
            run_eval()
        if config.save_every and step % config.save_every == 0:
            save_checkpoint()

    if bar is not None:
        bar.close()
    if eval_data is not None and last_eval != step:
        run_eval()
    if last_save != step:
        save_checkpoint()
    full_model = weights.unsharded()
    if info.is_main:
        _save_final_model(full_model, out_dir)
        write_loss_curve(metrics_path, out_dir / "loss_curve.png")
    barrier(info)
    return TrainResult(step=step, train_loss=train_loss, eval_metrics=eval_metrics, out_dir=out_dir)
