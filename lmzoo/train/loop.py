"""The one training loop: every family, pretraining and fine-tuning.

AdamW + warmup/decay schedule, gradient accumulation, clipping, bf16 autocast, periodic eval,
best-model keeping and early stopping (:class:`Selection`), atomic checkpoints with exact resume,
DDP / FSDP2 under torchrun.

Determinism is by construction, so a resumed run replays the uninterrupted one exactly:
- the data position is a pure function of the global step (epoch permutation seeded by
  (seed, epoch), rank shard ``indices[rank::world]``, drop-last micro-batches);
- the collator's generator is seeded by (seed, step, micro-step, rank);
- the torch / numpy / python RNG states (dropout) are saved in every checkpoint, per rank, and so
  is the logging window (its loss sum, tokens and steps), so the first log line after a resume
  averages the same steps as the uninterrupted run.

Reliability (what must stay true):
- one writer per run folder (:mod:`lmzoo.train.lock`), taken before anything is written;
- SIGTERM / SIGINT finish the optimizer step, save a checkpoint and raise :class:`RunInterrupted`
  (exit 143 / 130); under torchrun the ranks agree on the step through an all-reduce;
- a resume skips damaged checkpoints (saying which file is bad) and refuses options that contradict
  the checkpoint's signature; stale temporary folders of killed runs are removed at start;
- a non-finite loss stops the run before it is saved: the last checkpoint stays the last good one.

metrics_fn convention: ``metrics_fn(batch, output) -> {name: sum}``; the sums are added over eval
batches; a pair ``X_correct`` / ``X_total`` is reported as ``X_accuracy = correct / total``; any
other key is reported as its total.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import errno
import gc
import hashlib
import io
import json
import logging
import math
import os
import random
import pickle
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import safetensors.torch
import torch
from torch import nn

from lmzoo.errors import UserError
from lmzoo.io import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_mode,
    remove_folder,
    temp_folder,
)
from lmzoo.nn.stack import set_activation_checkpointing
from lmzoo.train.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_max,
    all_reduce_min,
    all_reduce_sum,
    barrier,
    broadcast_object,
    is_main_process,
    main_decides,
    reshard,
    set_grad_sync,
    setup_distributed,
    teardown_distributed,
    wrap_model,
)
from lmzoo.train.lock import run_folder
from lmzoo.train.throughput import max_rss_mb, peak_flops

SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
# Files a run writes into out_dir (and --overwrite removes).
# The old run's task files (tasks/classification.py, tasks/seq2seq.py) and a replaced model's generation
# config go too: left beside the new model they would apply to it (text2text would prepend an old prefix).
RUN_FILES = ("metrics.jsonl", "loss_curve.png", "config.json", "model.safetensors", "lmzoo_task.json",
             "lmzoo_seq2seq.json", "generation_config.json")
# Files that make a folder a model folder: a run's --out that holds one is replaced only with --overwrite.
MODEL_FILES = ("config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
               "tf_model.h5", "flax_model.msgpack")
EVAL_SEED = 1234
# TrainConfig fields a resume must keep (they fix the data order); a run adds its own (preset ...).
# batch_size is compared as the global batch (x processes): another number of processes may resume.
RESUME_FIXED = ("batch_size", "grad_accum", "seed")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyperparameters of one run. ``batch_size`` is per process and per micro-step, so the
    global batch is ``world_size * batch_size * grad_accum`` examples."""

    max_steps: int = 0  # optimizer steps; replaced by the count of ``epochs`` when that is set
    epochs: float | None = None  # passes over the training data (may be fractional); sets max_steps in train()
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
    activation_checkpointing: bool = False  # recompute each layer's activations in the backward pass
    tensorboard: bool = False  # also write TensorBoard events into out_dir/tensorboard
    peak_flops: float | None = None  # FLOP/s of one device for MFU (None: the cached matmul probe)

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise UserError(message)

        if self.epochs is not None:
            check(isinstance(self.epochs, (int, float)) and not isinstance(self.epochs, bool)
                  and math.isfinite(self.epochs) and self.epochs > 0,
                  f"epochs must be a positive finite number, got {self.epochs!r}")
        counted = ("batch_size", "grad_accum", "eval_batches", "log_every", "keep_checkpoints")
        for name in counted if self.epochs is not None else ("max_steps", *counted):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "eval_every", "save_every", "seed"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 0, f"{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "weight_decay", "eps", "min_lr_ratio", *(("clip_norm",) if self.clip_norm is not None else ())):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                  f"{name} must be a finite number, got {value!r}")
        check(len(self.betas) == 2 and all(isinstance(b, (int, float)) and math.isfinite(b) for b in self.betas),
              f"betas must be two finite numbers, got {self.betas}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two values in [0, 1), got {self.betas}")
        check(self.eps > 0, f"eps must be > 0, got {self.eps}")
        check(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check(self.clip_norm is None or self.clip_norm > 0, f"clip_norm must be > 0 or None, got {self.clip_norm}")
        check(self.precision in PRECISIONS, f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        check(isinstance(self.max_steps, int) and self.max_steps >= 0,
              f"max_steps must be a positive integer, got {self.max_steps!r}")
        check(self.peak_flops is None or (isinstance(self.peak_flops, (int, float)) and not isinstance(
            self.peak_flops, bool) and math.isfinite(self.peak_flops) and self.peak_flops > 0),
              f"peak_flops must be a positive number of FLOP/s, got {self.peak_flops!r}")


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Best-model keeping and early stopping, done by the loop at every evaluation.

    ``score(model)`` returns the task metrics of ``model`` (generation BLEU, classification F1 ...).
    The loop calls it on rank 0 alone, in eval mode without gradients, with the full (unsharded)
    weights; the scalar values reach every rank, so every rank takes the same keep / stop decision,
    and are logged as ``eval_<name>``. When ``metric`` improves, ``save_best(model, folder,
    metrics)`` writes the model into ``folder`` (a temporary folder that then replaces
    ``out_dir/best`` in one rename), with every value ``score`` returned plus ``"step"``. After
    ``patience`` evaluations without improvement the run ends early (0: never).
    """

    score: Callable[[nn.Module], Mapping[str, Any]]
    metric: str
    higher_is_better: bool = True
    patience: int = 0
    save_best: Callable[[nn.Module, Path, dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.patience, int) or self.patience < 0:
            raise UserError(f"patience must be an integer >= 0, got {self.patience!r}")

    def improves(self, value: float, best: float) -> bool:
        return value > best if self.higher_is_better else value < best


@dataclass
class TrainResult:
    """``train_loss``: mean loss over the last logging window; ``eval_metrics``: the last eval loss
    (and ``metrics_fn`` values); ``best``: the scalar scores of the best evaluation with its
    ``"step"`` (empty without a :class:`Selection`); ``stopped_early``: ended by ``patience``."""

    step: int
    train_loss: float
    eval_metrics: dict[str, float] = field(default_factory=dict)
    out_dir: Path = Path(".")
    best: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    compile_s: float | None = None  # with compile: seconds of the warm-up step that compiled the model


# ---------------------------------------------------------------------------------------------
# Schedule, optimizer, seeds


def steps_for_epochs(config: TrainConfig, n_examples: int, world_size: int = 1) -> int:
    """Optimizer steps of ``config.epochs`` passes over ``n_examples``: ceil(epochs * n / global batch),
    the global batch being ``batch_size * grad_accum * world_size`` examples."""
    global_batch = config.batch_size * config.grad_accum * world_size
    return max(1, math.ceil(config.epochs * n_examples / global_batch))


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


def _check_rng_states(states: list[Any]) -> None:
    """Each saved generator state is set once (the current ones are put back after): one that does
    not load raises here, where the checkpoint is judged, not in the middle of a resume."""
    cpu = torch.device("cpu")
    current = _rng_state(cpu)
    try:
        for state in states:
            _set_rng_state(state, cpu)
    finally:
        _set_rng_state(current, cpu)


# ---------------------------------------------------------------------------------------------
# Files of a run


def _checkpoints(out_dir: Path) -> list[Path]:
    """Checkpoint folders ``step-N``, oldest first (temporary folders start with '.' and are skipped).
    A listed one may still be damaged: see :func:`_checkpoint_problem`."""
    folder = out_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def remove_stale_temps(*folders: Path) -> None:
    """Remove the temporary files and folders (``.NAME.*.tmp``, see :mod:`lmzoo.io`) that a run killed
    mid-write left in ``folders``. Call it only while holding the run folder's lock: then none of
    them belongs to a live writer."""
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def no_checkpoint_message(out_dir: Path) -> str:
    """What a resume of ``out_dir`` without any checkpoint says: why, and how to start over."""
    if not out_dir.is_dir():
        return f"nothing to resume: {out_dir} does not exist"
    if not _holds_run(out_dir) and (found := _model_file(out_dir)):  # --overwrite would delete that model
        return f"nothing to resume: {out_dir} holds no run but a model ({found}); choose another --out"
    return (f"nothing to resume: {out_dir} holds no checkpoint yet (the run stopped before its first one); "
            "start over with --overwrite")


def _reason(error: BaseException) -> str:
    """One short line for why a file did not read."""
    if isinstance(error, pickle.UnpicklingError):
        return "refused: it holds pickled objects that are not plain tensors"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


def _checkpoint_problem(path: Path) -> tuple[str | None, dict[str, Any]]:
    """(``"FILE: why it does not read"`` or None, the trainer state) of a checkpoint folder. Every
    file a resume reads is opened: the trainer state parsed, the weights' header checked against
    the file size, the optimizer state unpickled with ``weights_only`` (never arbitrary objects)."""
    state_file = path / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text())
        if not (isinstance(state, dict) and isinstance(state["step"], int) and isinstance(state["rng"], list)
                and state["rng"] and all(isinstance(w, dict) for w in state.get("window") or [])):
            raise ValueError("not a trainer state (step, rng, window)")
        _check_rng_states(state["rng"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        return f"{state_file}: {_reason(e)}", {}
    weights, optimizer = _weights_file(path), path / "optimizer.pt"
    try:
        with safetensors.safe_open(str(weights), "pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 -- any failure to read is a damaged file; the line says which
        return f"{weights}: {_reason(e)}", state
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol before refusing
            torch.load(optimizer, weights_only=True, map_location="cpu", mmap=True)
    except Exception as e:  # noqa: BLE001
        return f"{optimizer}: {_reason(e)}", state
    return None, state


def _holds_run(out_dir: Path) -> bool:
    return (out_dir / "metrics.jsonl").exists() or (out_dir / "checkpoints").exists()


def architecture_of(model: nn.Module) -> str:
    """What a run trains, as its checkpoints record it: a resume must train the same."""
    return getattr(model, "hf_architecture", "") or type(model).__name__


def _loop_signature(model: nn.Module, config: TrainConfig) -> dict[str, Any]:
    """What a resume must keep that the loop knows; the architecture first: a run of another model
    is the first contradiction to name."""
    return {"architecture": architecture_of(model), **{k: getattr(config, k) for k in RESUME_FIXED}}


def _model_file(out_dir: Path) -> str | None:
    """The first file of ``out_dir`` that makes it a model folder (a config or weights), else None."""
    if not out_dir.is_dir():
        return None
    return next((p.name for p in sorted(out_dir.iterdir()) if any(p.match(g) for g in MODEL_FILES)), None)


def check_not_source(out_dir: str | os.PathLike, model: str | os.PathLike | None) -> None:
    """--out must not be the --model folder a run starts from, nor one that holds it (as OUT holds
    OUT/best): the run replaces (--overwrite removes) the model files there, so the starting model
    would be lost even with --overwrite."""
    if model is None:
        return
    out, source = Path(out_dir).resolve(), Path(model).resolve()
    if out == source or out in source.parents:
        where = "is" if out == source else "holds"
        raise UserError(f"--out {out_dir} {where} the --model folder {model}: the run would replace the model "
                        "it starts from; choose another --out")


def check_finetune_out(out_dir: str | os.PathLike, model: str | os.PathLike, *, resume: bool,
                       overwrite: bool) -> None:
    """The --out mistakes of a fine-tuning run, said before the model loads (the loop asks again
    under the lock)."""
    check_not_source(out_dir, model)
    check_out_dir(Path(out_dir), resume=resume, overwrite=overwrite)
    refuse_taken(Path(out_dir), resume=resume, overwrite=overwrite)


def refuse_taken(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """A folder that holds a run, or a model, is written into only with --resume / --overwrite."""
    if resume or overwrite:
        return
    if _holds_run(out_dir):
        raise UserError(f"{out_dir} already holds a run; pass --resume or --overwrite")
    if found := _model_file(out_dir):
        raise UserError(f"{out_dir} already holds a model ({found}); pass --overwrite to replace it, "
                        "or choose another --out")


def _remove_run(out_dir: Path) -> None:
    for name in ("checkpoints", "best", "tensorboard"):  # best: the Selection's best model of the old run
        if (out_dir / name).is_dir():
            remove_folder(out_dir / name)
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


def write_loss_curve(metrics_path: Path, png_path: Path, title: str | None = None) -> None:
    """Train loss and eval loss vs step, as a PNG written atomically (Agg canvas, no global backend);
    ``title`` names the run (default: its folder)."""
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
    ax.set_title(title or png_path.parent.name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(png_path, buf.getvalue())


def _save_model_file(model: nn.Module, path: Path) -> None:
    """``safetensors.torch.save_model`` (it drops tied duplicates), with the umask's file mode: the
    safetensors writer creates its files 0600."""
    try:
        safetensors.torch.save_model(model, str(path))
    except safetensors.SafetensorError as e:
        # its Rust writer reports a full disk as text alone ("os error 28"): give it back its errno
        if "os error 28" in str(e):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from e
        raise
    os.chmod(path, file_mode())


def _save_weights(model: nn.Module, folder: Path) -> None:
    """HF folder via save_pretrained when the model has it, plus the loop's exact copy for resume."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
        _save_model_file(model, folder / "trainer_model.safetensors")
    else:
        _save_model_file(model, folder / "model.safetensors")


def _weights_file(folder: Path) -> Path:
    """The loop's exact copy of a checkpoint's weights: with an HF folder (config.json, written by
    save_pretrained) it is trainer_model.safetensors, never the HF file, whose keys may differ."""
    if (folder / "config.json").exists():
        return folder / "trainer_model.safetensors"
    return folder / "model.safetensors"


def _save_final_model(model: nn.Module, out_dir: Path) -> None:
    """config.json + model.safetensors into out_dir: written in a temp folder, then renamed file by file."""
    tmp = temp_folder(out_dir, "final")
    try:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp)
        else:
            _save_model_file(model, tmp / "model.safetensors")
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
        """The model with full weights on rank 0 (None elsewhere), the one way to a full model for
        saving and scoring; a collective under FSDP (every rank calls it), where it is a CPU copy."""
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
    select: Selection | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    progress: bool = True,
    run_signature: Mapping[str, Any] | None = None,
    finalize: Callable[[Path], None] | None = None,
    flops_fn: Callable[[Mapping[str, Any]], float] | None = None,
    notes: Sequence[str] = (),
) -> TrainResult:
    """Train ``model`` on ``train_data`` for ``config.max_steps`` optimizer steps.

    ``model(**batch)`` must return an object with a scalar ``.loss``. ``collate(examples, generator)``
    builds a batch, drawing all randomness from ``generator``. An evaluation runs every
    ``config.eval_every`` steps and at the end: the eval loss over ``eval_data`` (with
    ``metrics_fn``), then ``select`` (see :class:`Selection`: best model in ``out_dir/best``, early
    stopping). ``on_checkpoint(step, path)`` runs on every rank after each checkpoint is in place
    (an exception there stops the run, like a kill). Under torchrun the run is data-parallel (DDP,
    or FSDP2 with ``config.fsdp``); rank 0 writes files.

    ``out_dir`` is locked for the run (a second writer gets a UserError). ``run_signature``: what
    else a resume must keep (JSON values, e.g. ``{"preset": ..., "seq_len": ...}``), saved with the
    checkpoints next to :data:`RESUME_FIXED`; a resume that contradicts it names the option. SIGTERM
    or SIGINT saves a checkpoint at the end of the current step and raises :class:`RunInterrupted`.
    ``finalize(out_dir)`` runs on rank 0 after the final model is written, still under the lock: the
    caller's own files (a tokenizer, task options) are written by the one writer too.
    ``flops_fn(batch)``: the model FLOPs of one collated micro-batch (forward + backward): every log
    record gets ``mfu``. ``notes``: lines for the user, printed once every check has passed.
    """
    from lmzoo.quantize import refuse_if_quantized

    refuse_if_quantized(model, "train")
    check_extras(config)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, resume=resume, overwrite=overwrite)
    signature = {**_loop_signature(model, config), **(run_signature or {})}
    fresh = not out_dir.exists()
    info = setup_distributed()
    try:
        config, epoch_notes = _epochs_as_steps(config, len(train_data), info.world_size)
        with run_folder(out_dir, info):
            # Refuse before anything is written (rank 0 reads, every rank gets its answer), then clean up.
            checkpoint = main_decides(info, lambda: _checkpoint_to_resume(
                out_dir, resume=resume, overwrite=overwrite, config=config, signature=signature,
                world_size=info.world_size))
            sampler = _Sampler(len(train_data), config.batch_size, config.seed, info.rank, info.world_size)
            if info.is_main:
                remove_stale_temps(out_dir, out_dir / "checkpoints")
                if overwrite:
                    _remove_run(out_dir)
            barrier(info)
            run = _Run(model, train_data, collate, out_dir=out_dir, config=config, info=info, sampler=sampler,
                       eval_data=eval_data, metrics_fn=metrics_fn, select=select, on_checkpoint=on_checkpoint,
                       checkpoint=checkpoint, signature=signature, flops_fn=flops_fn)
            if info.is_main:  # said once every check has passed
                for line in [*notes, *epoch_notes]:
                    print(line, file=sys.stderr)
            with _StopSignals() as stop, full_disk_is_a_user_error(out_dir), contextlib.closing(run):
                result = run.fit(progress=progress, stop=stop)
            if finalize is not None and info.is_main:
                finalize(out_dir)
            barrier(info)
            return result
    except UserError:
        if fresh and info.is_main:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if empty: a refused fresh run leaves no folder behind
        raise
    finally:
        teardown_distributed(info)


def fit_batch_to_data(train_config: Any, n_examples: int, processes: int, path: str | Path
                      ) -> tuple[Any, str | None]:
    """(``train_config`` with its per-process batch cut to the examples each process has, the note
    saying so) when the training file holds fewer than one batch, else (``train_config``, None): the
    default batch of 32 would refuse a small file. Fewer examples than processes is left to the
    loop's error.""" 
    per_process = n_examples // processes
    if 1 <= per_process < train_config.batch_size:
        note = (f"note: {path} has {n_examples} examples, fewer than --batch-size {train_config.batch_size}"
                + (f" per process ({processes} processes)" if processes > 1 else "")
                + f": training with batches of {per_process}")
        return dataclasses.replace(train_config, batch_size=per_process), note
    return train_config, None


def _epochs_as_steps(config: TrainConfig, n_examples: int, world_size: int) -> tuple[TrainConfig, list[str]]:
    """``config`` with ``epochs`` turned into ``max_steps`` (so the schedule, resume and logs see one
    number), and the note saying so; unchanged without epochs."""
    if config.epochs is None:
        return config, []
    steps = steps_for_epochs(config, n_examples, world_size)
    return dataclasses.replace(config, max_steps=steps), [f"note: {config.epochs:g} epochs of {n_examples} "
                                                          f"examples: {steps} steps"]


def check_extras(config: TrainConfig) -> None:
    """The optional packages the config asks for, checked before anything is written."""
    if config.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package: pip install 'lmzoo[tensorboard]'") from None


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through memory: its own writer reports a full disk as a bare RuntimeError, a
    plain write as the OSError (with the file's name) that full_disk_is_a_user_error reads."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        path.write_bytes(buffer.getbuffer())
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e


@contextlib.contextmanager
def full_disk_is_a_user_error(out_dir: Path):
    """A full disk (or quota) while the run writes becomes one line naming the file and the newest
    complete checkpoint: every write is atomic, so that checkpoint is intact."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        found = _checkpoints(out_dir)
        then = (f"the last checkpoint {found[-1]} is intact: free space, then run again with --resume" if found
                else "free space, then run again")
        raise UserError(f"no space left on the device writing {e.filename or out_dir}; {then}") from None


def check_out_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """The mistakes about a run folder that need no lock: both flags, a file, a resume of nothing."""
    if resume and overwrite:
        raise UserError("pass either --resume or --overwrite, not both")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file; the output of a run is a folder")
    if resume and not out_dir.is_dir():
        raise UserError(no_checkpoint_message(out_dir))


def require_checkpoint(out_dir: Path) -> None:
    """A UserError saying there is nothing to resume when ``out_dir`` holds no checkpoint folder
    (asked while holding the lock, before a resume reads the rest of the run)."""
    if not _checkpoints(out_dir):
        raise UserError(no_checkpoint_message(out_dir))


def _checkpoint_to_resume(out_dir: Path, *, resume: bool, overwrite: bool, config: TrainConfig,
                          signature: Mapping[str, Any], world_size: int = 1) -> Path | None:
    """The newest intact checkpoint to resume from (None for a fresh run). Damaged newer ones are
    named, one line each, and removed (the resumed run writes those steps again)."""
    refuse_taken(out_dir, resume=resume, overwrite=overwrite)
    if not resume:
        return None
    require_checkpoint(out_dir)
    found, damaged = _checkpoints(out_dir), []
    for path in reversed(found):
        problem, state = _checkpoint_problem(path)
        if problem is None:
            break
        print(f"warning: checkpoint {path.name} is damaged: {problem}", file=sys.stderr)
        damaged.append(path)
    else:
        raise UserError(f"no intact checkpoint in {out_dir / 'checkpoints'} (each is named above); "
                        "start over with --overwrite")
    _check_resume_options(path, state, signature, world_size)
    _check_steps_left(path, state, config)
    _schedule_note(state, config)
    if damaged:
        print(f"resuming from {path} (step {state['step']}), the newest intact checkpoint", file=sys.stderr)
        for bad in damaged:
            remove_folder(bad)
    return path


def _check_resume_options(path: Path, state: Mapping[str, Any], signature: Mapping[str, Any],
                          world_size: int = 1) -> None:
    """A UserError naming the first option that differs from the checkpoint's signature (checkpoints
    written before signatures existed are compared on their saved config). The batch size counts as
    the global batch: a run saved by 2 processes of 4 examples resumes as 1 process of 8."""
    saved_config = state.get("config") or {}
    saved = {**{k: saved_config.get(k) for k in RESUME_FIXED}, **(state.get("signature") or {})}
    saved_world = int(state.get("world_size") or 1)
    for key, value in signature.items():
        value = json.loads(json.dumps(value))  # as the checkpoint holds it (tuples become lists)
        if key == "architecture" and saved.get(key) is not None and saved[key] != value:
            raise UserError(f"{path.parent.parent} holds a run that trains a {saved[key]}, not a {value}: "
                            "choose another --out (--overwrite would replace that run)")
        if key == "batch_size" and saved.get(key) is not None and saved_world != world_size:
            if saved[key] * saved_world != value * world_size:
                raise UserError(
                    f"--batch-size {value} contradicts the checkpoint {path} ({saved[key]} per process x "
                    f"{saved_world} processes = a global batch of {saved[key] * saved_world}; here "
                    f"{value * world_size}): resume with --batch-size {saved[key] * saved_world // world_size}")
            continue
        if saved.get(key) is not None and saved[key] != value:
            raise UserError(f"--{key.replace('_', '-')} {_shown(value)} contradicts the checkpoint {path} "
                            f"({_shown(saved[key])}); resume with the same value or start over with --overwrite")


def _shown(value: Any) -> str:
    """An option's value as it is typed: ``KEY=VALUE`` pairs, space-separated lists, "none" when empty."""
    if isinstance(value, dict):
        value = [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return str(value)


def _check_steps_left(path: Path, state: Mapping[str, Any], config: TrainConfig) -> None:
    """A resume below the checkpoint's step would train nothing and rewrite the final model."""
    if config.epochs is None and config.max_steps < int(state.get("step") or 0):
        raise UserError(f"--max-steps {config.max_steps} is below the step of the checkpoint {path} "
                        f"({state['step']}): resume with --max-steps {state['step']} or more")


def _schedule_note(state: Mapping[str, Any], config: TrainConfig) -> None:
    """One note when a resume's ``max_steps`` re-stretches the lr schedule (allowed: see _scheduler)."""
    old_steps = (state.get("config") or {}).get("max_steps")
    if old_steps is not None and old_steps != config.max_steps and config.schedule != "constant":
        print(f"note: --max-steps {config.max_steps} (the checkpoint's run had {old_steps}): the lr schedule "
              f"continues on the curve re-stretched to {config.max_steps} steps", file=sys.stderr)


def check_resume_signature(out_dir: Path, config: TrainConfig, signature: Mapping[str, Any],
                           world_size: int = 1) -> None:
    """Before a caller prepares a resume (tokenizer, corpus): a UserError naming an option that
    contradicts the newest readable checkpoint state. Silent otherwise; :func:`train` reports
    damaged checkpoints and the schedule note."""
    for path in reversed(_checkpoints(out_dir)):
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((path / "trainer_state.json").read_text())
            if isinstance(state, dict):
                _check_resume_options(path, state, {**{k: getattr(config, k) for k in RESUME_FIXED}, **signature},
                                      world_size)
                _check_steps_left(path, state, config)
                return


class RunInterrupted(SystemExit):
    """A run stopped by SIGTERM / SIGINT; its exit status is 128 + the signal number (143 / 130)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class _StopSignals:
    """SIGTERM and SIGINT while training: the first asks the loop to stop at the end of the current
    step (it saves a checkpoint, then raises :class:`RunInterrupted`); a second stops at once (the
    checkpoint being written, if any, is discarded by its atomic folder). The previous handlers are
    back when the block ends. Outside the main thread (no handler can be set there) it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            return
        if is_main_process():
            print(f"{signal.Signals(signum).name} again: stopped at once, without a new checkpoint", file=sys.stderr)
        raise RunInterrupted(signum)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int
               ) -> torch.optim.lr_scheduler.LambdaLR:
    """The lr of optimizer step s is ``config.lr * lr_factor(config, s)``, a function of the step alone: a
    resumed run rebuilds the schedule at ``step`` from its own config (so a longer ``max_steps`` or another
    lr continues on the new curve) and never reads the saved scheduler state."""
    for group in optimizer.param_groups:
        group["initial_lr"] = config.lr  # LambdaLR's base lr; a loaded optimizer state holds the old run's
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s), last_epoch=step - 1)


class _Run:
    """One run in progress: the model (bare, wrapped for the forward, and its full weights), the
    optimizer, the data order and the trainer state. :meth:`fit` drives step → log → evaluate → save.

    A checkpoint carries, besides weights, optimizer and per-rank RNG states and logging windows, the
    trainer state ``step``, ``train_loss``, the selection's ``best`` scores and ``stale`` count
    (evaluations since the best) and the run's ``signature``, so a resumed run logs, keeps and stops
    exactly as the uninterrupted one.
    """

    def __init__(self, model: nn.Module, train_data, collate: Callable, *, out_dir: Path, config: TrainConfig,
                 info: DistInfo, sampler: _Sampler, eval_data, metrics_fn: Callable | None,
                 select: Selection | None, on_checkpoint: Callable[[int, Path], None] | None,
                 checkpoint: Path | None, signature: Mapping[str, Any],
                 flops_fn: Callable[[Mapping[str, Any]], float] | None = None) -> None:
        self.config, self.info, self.out_dir, self.sampler = config, info, out_dir, sampler
        self.signature = dict(signature)
        self.train_data, self.collate, self.eval_data, self.metrics_fn = train_data, collate, eval_data, metrics_fn
        self.select, self.on_checkpoint = select, on_checkpoint
        self.device, self.metrics_path, self.bar = info.device, out_dir / "metrics.jsonl", None
        self.step, self.train_loss, self.lr = 0, math.nan, config.lr
        self.best: dict[str, Any] = {}
        self.stale, self.stopped_early, self.last_save, self.last_epoch = 0, False, -1, None
        self.eval_metrics: dict[str, float] = {}
        # the steps since the last log line; the loss is summed on the device, so a step never waits for it
        self.window_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.window_tokens, self.window_steps, self.window_start = 0, 0, 0.0
        self.window_examples = 0  # examples/s for batches without tokens to count
        # model FLOPs of the window, and its training seconds before a resume (the clock restarts)
        self.flops_fn, self.window_flops, self.window_seconds = flops_fn, 0.0, 0.0
        self.compile_s: float | None = None  # logged with the first window's record
        self.compile_logged = False
        self.tensorboard = None
        # the first step (1-based) after which the window's loss was not finite, -1 while none: kept on
        # the device and read only where the loop syncs anyway (log, evaluation, checkpoint)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)

        self.raw = model.to(self.device)
        if config.activation_checkpointing and set_activation_checkpointing(self.raw) == 0:
            raise UserError("--activation-checkpointing: this model has no layer stack to checkpoint")
        self.peak = None if flops_fn is None else config.peak_flops or peak_flops(self.device, config.precision)
        rngs = self._restore(checkpoint) if checkpoint is not None else None
        self.weights = _Weights(self.raw, info, config.fsdp)
        fwd = torch.compile(self.raw) if config.compile else self.raw
        self.fwd = wrap_model(fwd, info, fsdp=config.fsdp)
        self.optimizer = build_optimizer(self.raw, config, allow_fused=not self.weights.fsdp)
        if checkpoint is not None:
            saved = torch.load(checkpoint / "optimizer.pt", weights_only=True, map_location=self.device)
            self.weights.load_optimizer_state(self.optimizer, saved)
            _set_rng_state(rngs[info.rank % len(rngs)], self.device)
        else:  # dropout draws from the global generators: a run with a seed is the same run in any process
            torch.manual_seed(derive_seed(config.seed, "dropout", info.rank))
        self.scheduler = _scheduler(self.optimizer, config, self.step)

    def _restore(self, checkpoint: Path) -> list[dict[str, Any]]:
        """Weights into the bare model (before wrapping, so DDP / FSDP see the resumed values) and the
        trainer state; returns the per-rank RNG states."""
        try:
            safetensors.torch.load_model(self.raw, str(_weights_file(checkpoint)), device=str(self.device))
        except RuntimeError as e:  # a checkpoint of another model (written before runs recorded theirs)
            raise UserError(f"{checkpoint} holds weights of another model than this run's "
                            f"{architecture_of(self.raw)}: choose another --out") from e
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        self.step = self.last_save = int(state["step"])
        if state.get("train_loss") is not None:
            self.train_loss = float(state["train_loss"])
        self.best, self.stale = dict(state.get("best") or {}), int(state.get("stale", 0))
        windows = state.get("window") or []
        if windows:
            self._restore_window(windows)
        # a run that had stopped early stays stopped, unless resumed with more patience
        self.stopped_early = self.select is not None and 0 < self.select.patience <= self.stale
        if self.info.is_main:  # drop metrics logged after the checkpoint (the resumed run re-logs them)
            kept = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= self.step]
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        return state["rng"]

    def _restore_window(self, windows: list[dict[str, Any]]) -> None:
        """The open logging window of each rank; saved by another number of processes, rank 0 takes
        the sums of all (scaled so the logged mean over ranks is the same) and the others none."""
        if len(windows) == self.info.world_size:
            window, scale = windows[self.info.rank], 1.0
        elif self.info.is_main:
            window = {k: sum(w.get(k, 0) for w in windows) for k in ("loss_sum", "tokens", "flops", "examples")}
            window.update(steps=windows[0]["steps"], seconds=max(w.get("seconds", 0.0) for w in windows))
            scale = self.info.world_size / len(windows)
        else:
            window, scale = {"loss_sum": 0.0, "tokens": 0, "steps": windows[0]["steps"]}, 1.0
        self.window_loss.fill_(float(window["loss_sum"]) * scale)
        self.window_tokens, self.window_steps = int(window["tokens"]), int(window["steps"])
        self.window_examples = int(window.get("examples", 0))
        self.window_flops, self.window_seconds = float(window.get("flops", 0.0)), float(window.get("seconds", 0.0))

    def fit(self, *, progress: bool, stop: "_StopSignals") -> TrainResult:
        with CompileOutput(enabled=self.config.compile) as compile_output:
            return self._fit(progress=progress, stop=stop, compile_output=compile_output)

    def _fit(self, *, progress: bool, stop: "_StopSignals", compile_output: "CompileOutput") -> TrainResult:
        config = self.config
        if progress and self.info.is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=config.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        if config.tensorboard and self.info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run logs the steps after its checkpoint again: older events from there on go
            self.tensorboard = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step + 1)
        evaluates = self.eval_data is not None or self.select is not None
        self.fwd.train()
        if config.compile and self.step < config.max_steps:
            self.compile_s = self._warm_up()
            self._say(f"torch.compile: compiled in {self.compile_s:.1f} s (a warm-up step, kept out of the "
                      f"throughput){compile_output.summary()}")
        # the throughput counts training, not the setup (nor evaluations and checkpoints: _paused)
        self.window_start = time.perf_counter() - self.window_seconds
        while self.step < config.max_steps and not self.stopped_early:
            self._train_step()
            step = self.step
            if step % config.log_every == 0 or step == config.max_steps:
                self._log()
            if evaluates and (step == config.max_steps or (config.eval_every and step % config.eval_every == 0)):
                with self._paused():
                    self._evaluate()
                if self.stopped_early and self.window_steps:  # the last, partial window is logged as at the end
                    self._log()
            if config.save_every and step % config.save_every == 0:
                with self._paused():
                    self._save_checkpoint()
            signum = self._agreed_signal(stop)
            if signum and step < config.max_steps:
                self._stop(signum)
        if self.bar is not None:
            self.bar.close()
        if self.last_save != self.step:
            self._save_checkpoint()
        full = self.weights.unsharded()
        if self.info.is_main:
            _save_final_model(full, self.out_dir)
            write_loss_curve(self.metrics_path, self.out_dir / "loss_curve.png",
                             title=f"{self.out_dir.resolve().name}: {type(full).__name__}")
        barrier(self.info)
        return TrainResult(step=self.step, train_loss=self.train_loss, eval_metrics=self.eval_metrics,
                           out_dir=self.out_dir, best=self.best, stopped_early=self.stopped_early,
                           compile_s=self.compile_s)

    def _warm_up(self) -> float:
        """Seconds of one forward + backward of the compiled model on the run's next batch, which
        compiles it before the clock of the first logging window starts. Nothing of the run changes:
        the gradients are dropped, the RNG states (dropout) put back, no step is taken."""
        config, step = self.config, self.step
        rng = torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        _, idx = self.sampler.indices(step * config.grad_accum)
        batch = self.collate([self.train_data[i] for i in idx], _generator(config.seed, "warm-up", step, self.info.rank))
        start = time.perf_counter()
        with _autocast(self.device, config.precision):
            loss = self.fwd(**_to_device(batch, self.device)).loss
        loss.backward()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state(rng[1], self.device)
        return seconds

    @contextlib.contextmanager
    def _paused(self):
        """Time spent in the block does not count towards the logging window's throughput."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.window_start += time.perf_counter() - start

    def close(self) -> None:
        """Flush and close the TensorBoard writer, and free the DDP wrapper while the process group
        is alive (also when the run stops on an error). Freed after ``destroy_process_group``, its
        Reducer drops the group's last reference and joins gloo's threads holding the GIL, which
        deadlocks when one of them waits for the GIL (seen under torchrun on 2 CPU processes)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.info.distributed:
            self.fwd = None
            gc.collect()  # the wrapper's hooks form cycles: free it now, not at some later collection

    def _scalars(self, prefix: str, values: Mapping[str, Any]) -> None:
        """The record's numbers as TensorBoard scalars ``prefix/name`` at this step (with --tensorboard)."""
        if self.tensorboard is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step":
                    self.tensorboard.add_scalar(f"{prefix}/{name}", value, self.step)
            self.tensorboard.flush()

    def _agreed_signal(self, stop: "_StopSignals") -> int:
        """The stop signal every rank acts on at this step boundary (0: none). Under torchrun the ranks
        may receive it at different steps: an all-reduce makes them all stop after the same one."""
        signum = stop.signum or 0
        if self.info.world_size > 1:
            signum = int(all_reduce_max(self.info, [float(signum)])[0])
        return signum

    def _stop(self, signum: int) -> None:
        """Save the step just finished (unless saved already), say where and how to go on, and exit."""
        if self.last_save != self.step:
            self._save_checkpoint()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        path = self._checkpoint_path(self.step)
        self._say(f"{signal.Signals(signum).name}: stopped after step {self.step}; checkpoint {path}; "
                  "continue with the same command and --resume")
        raise RunInterrupted(signum)

    def _train_step(self) -> None:
        """One optimizer step over ``grad_accum`` micro-batches. The hot path: no host-device sync here."""
        config, step = self.config, self.step
        for micro in range(config.grad_accum):
            epoch, idx = self.sampler.indices(step * config.grad_accum + micro)
            if epoch != self.last_epoch and hasattr(self.train_data, "set_epoch"):
                self.train_data.set_epoch(epoch)
            self.last_epoch = epoch
            examples = [self.train_data[i] for i in idx]
            self.window_examples += len(examples)
            batch = self.collate(examples, _generator(config.seed, "collate", step, micro, self.info.rank))
            self.window_tokens += _count_tokens(batch)
            if self.flops_fn is not None:
                self.window_flops += self.flops_fn(batch)
            batch = _to_device(batch, self.device)
            # Gradients are all-reduced across ranks only on the last micro-step.
            with set_grad_sync(self.fwd, micro == config.grad_accum - 1):
                with _autocast(self.device, config.precision):
                    loss = self.fwd(**batch).loss / config.grad_accum
                loss.backward()
            self.window_loss += loss.detach().double()
        # a non-finite sum stays non-finite until the window is logged, which checks it
        self.bad_step.masked_fill_((self.bad_step < 0) & ~torch.isfinite(self.window_loss), step + 1)
        if config.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.raw.parameters(), config.clip_norm)
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.window_steps += 1
        if self.bar is not None:
            self.bar.update(1)

    def _log(self) -> None:
        """The window's mean loss over all ranks, the lr, the throughput (tokens / s, seconds per step,
        MFU) and the peak memory as one metrics record."""
        self._check_finite()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the window's kernels belong to its time
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        loss_sum, tokens, flops, examples = all_reduce_sum(
            self.info, [float(self.window_loss), float(self.window_tokens), self.window_flops,
                        float(self.window_examples)])
        memory = {"max_rss_mb": max_rss_mb()}
        if self.device.type == "cuda":
            memory["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        memory = dict(zip(memory, all_reduce_max(self.info, list(memory.values()))))
        self.train_loss = loss_sum / self.info.world_size / self.window_steps
        record = {"step": self.step, "loss": self.train_loss, "lr": self.lr, "tokens_per_s": tokens / elapsed,
                  "examples_per_s": examples / elapsed, "step_time_s": elapsed / self.window_steps}
        if self.peak is not None:
            record["mfu"] = flops / elapsed / (self.peak * self.info.world_size)
        record.update(memory)
        if self.compile_s is not None and not self.compile_logged:
            record["compile_s"] = self.compile_s
            self.compile_logged = True
        if self.info.is_main:
            _append_metrics(self.metrics_path, record)
            self._scalars("train", record)
            if self.bar is not None:
                mfu = {"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {}
                speed = {"tok_s": f"{tokens / elapsed:.0f}"} if tokens else {"ex_s": f"{examples / elapsed:.1f}"}
                self.bar.set_postfix(loss=f"{self.train_loss:.4f}", lr=f"{self.lr:.2e}", **speed, **mfu)
            else:  # --no-progress: one plain line per window, for CI logs and nohup files
                print(log_line(record, self.config.max_steps), file=sys.stderr, flush=True)
        self.window_loss.zero_()
        self.window_tokens, self.window_steps, self.window_start = 0, 0, time.perf_counter()
        self.window_examples = 0
        self.window_flops, self.window_seconds = 0.0, 0.0

    def _evaluate(self) -> None:
        """Eval loss on every rank, then the selection's scores: one metrics record per evaluation."""
        self._check_finite()  # a diverged model is neither scored nor kept as the best
        record: dict[str, Any] = {"step": self.step}
        if self.eval_data is not None:
            self.eval_metrics = evaluate(self.fwd, self.eval_data, self.collate, batch_size=self.config.batch_size,
                                         max_batches=self.config.eval_batches, device=self.device,
                                         precision=self.config.precision, metrics_fn=self.metrics_fn)
            if self.weights.fsdp:
                reshard(self.fwd)
            record.update(self.eval_metrics)
            line = f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in self.eval_metrics.items())
            if self.bar is not None:
                self.bar.write(line)
            elif self.info.is_main:  # as the log lines of a run without a bar
                print(line, file=sys.stderr, flush=True)
        if self.select is not None:
            record.update({f"eval_{k}": v for k, v in self._keep_best().items()})
        if self.info.is_main:
            _append_metrics(self.metrics_path, record)
            self._scalars("eval", {k.removeprefix("eval_"): v for k, v in record.items()})

    def _keep_best(self) -> dict[str, Any]:
        """Rank 0 scores the full model and every rank receives the scalar scores, so every rank takes
        the same keep / stop decision; rank 0 writes ``out_dir/best``. Returns the scalar scores."""
        select, info, step = self.select, self.info, self.step
        full = self.weights.unsharded()  # a collective under FSDP
        metrics, failure = None, None
        if info.is_main:
            try:
                metrics = _score(select, full, device=self.device, visit=self.weights.fsdp)
            except Exception as e:  # re-raised below, once the other ranks know (they wait in the broadcast)
                failure = e
        scores = broadcast_object(info, None if metrics is None else _scalars(metrics))
        if failure is not None:
            raise failure
        if scores is None:
            raise RuntimeError("rank 0 failed while scoring the model (see its error)")
        if select.metric not in scores:
            raise UserError(f"metric {select.metric!r} is not among the scores of this task ({', '.join(scores)})")
        value = scores[select.metric]
        self._say(f"step {step}: {select.metric} {value:.4f}")
        if select.metric not in self.best or select.improves(value, self.best[select.metric]):
            self.best, self.stale = {**scores, "step": step}, 0
            if info.is_main and select.save_best is not None:
                with atomic_directory(self.out_dir / "best") as tmp:
                    select.save_best(full, tmp, {**metrics, "step": step})
        else:
            self.stale += 1
            if select.patience and self.stale >= select.patience:
                self.stopped_early = True
                self._say(f"early stop at step {step}: no {select.metric} improvement in {select.patience} evaluations")
        return scores

    def _check_finite(self) -> None:
        """A UserError naming the first step whose loss was not finite, on every rank, before the
        diverged weights are logged, scored or saved: the last checkpoint stays the last good one."""
        bad = int(self.bad_step)
        if self.info.world_size > 1:  # the first bad step of any rank; every rank raises
            smallest = all_reduce_min(self.info, [float(bad) if bad >= 0 else math.inf])[0]
            bad = -1 if math.isinf(smallest) else int(smallest)
        if bad >= 0:
            last = self._checkpoint_path(self.last_save) if self.last_save > 0 else "none yet"
            raise UserError(f"the loss became non-finite at step {bad}; stopped without saving: the last good "
                            f"checkpoint is {last} (lower --lr or set --clip-norm, then --resume)")

    def _checkpoint_path(self, step: int) -> Path:
        return self.out_dir / "checkpoints" / f"step-{step:08d}"

    def _save_checkpoint(self) -> None:
        config, info, step = self.config, self.info, self.step
        self._check_finite()
        path = self._checkpoint_path(step)
        window = {"loss_sum": float(self.window_loss), "tokens": self.window_tokens, "steps": self.window_steps,
                  "flops": self.window_flops, "seconds": time.perf_counter() - self.window_start,
                  "examples": self.window_examples}
        per_rank = all_gather_object(info, (_rng_state(self.device), window))
        opt_state = self.weights.optimizer_state(self.optimizer)
        full = self.weights.unsharded()
        if info.is_main:
            with atomic_directory(path) as tmp:
                _save_weights(full, tmp)
                _torch_save(opt_state, tmp / "optimizer.pt")
                # for other tools: a resume rebuilds the schedule from the step (see _scheduler)
                _torch_save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                atomic_write_json(tmp / "trainer_state.json", {
                    "step": step,
                    "epoch": step * config.grad_accum // self.sampler.per_epoch,
                    "train_loss": None if math.isnan(self.train_loss) else self.train_loss,
                    "world_size": info.world_size,
                    "config": dataclasses.asdict(config),
                    "signature": self.signature,
                    "rng": [rng for rng, _ in per_rank],
                    "window": [w for _, w in per_rank],  # the open logging window of each rank
                    "best": self.best,
                    "stale": self.stale,
                })
            for old in _checkpoints(self.out_dir)[: -config.keep_checkpoints]:
                remove_folder(old)  # renamed away first: a half-deleted folder is never listed
        barrier(info)
        self.last_save = step
        if self.on_checkpoint is not None:
            self.on_checkpoint(step, path)

    def _say(self, line: str) -> None:
        """A line for the user on stderr, from rank 0 (through the progress bar when there is one)."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        elif self.info.is_main:
            print(line, file=sys.stderr)


class CompileOutput:
    """While a run with ``compile`` trains: the warnings torch.compile logs (graph breaks,
    recompilations; ~20 lines each on CPU) are held back and counted, for one summary line. Records
    of level ERROR and above still print, and exceptions are untouched; with ``TORCH_LOGS`` set the
    user asked for torch's own output, and nothing is held back."""

    SOURCES = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx", "torch._subclasses")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and not os.environ.get("TORCH_LOGS")
        self.held: list[logging.LogRecord] = []
        self._handlers: list[logging.Handler] = []
        self._warnings = warnings.catch_warnings()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or not record.name.startswith(self.SOURCES):
            return True
        self.held.append(record)
        return False

    def __enter__(self) -> "CompileOutput":
        if self.enabled:
            import torch._dynamo  # noqa: F401 -- installs torch's log handlers, which the filter joins

            loggers = [logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict) if n.startswith("torch")]
            self._handlers = list({h for lg in loggers for h in lg.handlers} | set(logging.getLogger().handlers))
            for handler in self._handlers:
                handler.addFilter(self)
            self._warnings.__enter__()
            for module in self.SOURCES:  # the same messages, as Python warnings
                warnings.filterwarnings("ignore", module=module.replace(".", r"\.") + r"(\.|$)")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            for handler in self._handlers:
                handler.removeFilter(self)
            self._warnings.__exit__(*exc)

    def summary(self) -> str:
        """``; N warnings held back (first: ...); TORCH_LOGS=... shows them`` or nothing."""
        if not self.held:
            return ""
        first = self.held[0].getMessage().strip().splitlines()[0][:100]
        return (f"; {len(self.held)} compiler warning(s) held back (first: {first}); "
                "TORCH_LOGS=graph_breaks,recompiles shows them")


def log_line(record: Mapping[str, Any], max_steps: int) -> str:
    """The plain line a run without a progress bar prints per logging window: what the bar shows
    (step, loss, lr, tokens/s, or examples/s for batches without tokens, MFU when known)."""
    speed = (f"{record['tokens_per_s']:.0f} tok/s" if record.get("tokens_per_s")
             else f"{record.get('examples_per_s', 0.0):.1f} ex/s")
    mfu = f" | mfu {record['mfu']:.1%}" if "mfu" in record else ""
    return (f"step {record['step']}/{max_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
            f"{speed}{mfu}")


def _score(select: Selection, model: nn.Module, *, device: torch.device, visit: bool) -> dict[str, Any]:
    """``select.score(model)`` in eval mode without gradients. ``visit``: ``model`` is the CPU copy of
    an FSDP run, moved to the device for scoring and back after (the device keeps only shards)."""
    was_training = model.training
    if visit:
        model.to(device)
    model.eval()
    try:
        with torch.no_grad():
            return dict(select.score(model))
    finally:
        model.train(was_training)
        if visit:
            model.cpu()


def _scalars(metrics: Mapping[str, Any]) -> dict[str, int | float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
