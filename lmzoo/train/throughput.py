"""How fast a run goes: model FLOPs of a batch, the machine's peak FLOP/s, peak memory.

MFU (model FLOPs utilisation, PaLM appendix B) is the model FLOPs of the steps (``lmzoo.flops``,
counted from the config and the batch's shapes, never from what a kernel happened to do) per second
over the peak FLOP/s of the processes' devices. The peak is ``--peak-flops`` when given, else a short
matmul probe in the run's precision, per machine (device name, precision, CPU threads), whose best
value so far is cached in ``$LMZOO_CACHE/peak_flops.json`` (default ``~/.cache/lmzoo``).
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from typing import Any, Mapping

import torch

from lmzoo.config import ModelConfig
from lmzoo.io import cache_dir
from lmzoo.flops import training_flops
from lmzoo.io import atomic_write_json

IGNORE_INDEX = -100
PROBE_SIZE = {"cpu": 1024, "cuda": 8192}  # square matmul side: long enough to reach the plateau
PROBE_REPEATS = 5


def batch_flops(config: ModelConfig, batch: Mapping[str, Any]) -> float:
    """Forward + backward model FLOPs of one batch of an objective's collator, from its shapes: every
    row runs ``input_ids.shape[1]`` tokens (padding is computed too); an encoder-decoder adds its
    ``labels`` as decoder targets; a permutation-LM batch (``target_mapping``) adds its query rows;
    otherwise the LM head runs over the labelled positions (an MLM head only sees the masked rows, a
    causal LM labels nearly every position)."""
    ids = batch["input_ids"]
    rows, tokens = ids.shape
    labels = batch.get("labels")
    if config.is_encoder_decoder and isinstance(labels, torch.Tensor):
        return float(rows * training_flops(config, tokens=tokens, targets=labels.shape[-1]))
    mapping = batch.get("target_mapping")
    if isinstance(mapping, torch.Tensor):
        query = mapping.shape[1]
        return float(rows * training_flops(config, tokens=tokens, query_rows=query, head_rows=query))
    if isinstance(labels, torch.Tensor) and labels.shape == ids.shape:
        labelled = int((labels != IGNORE_INDEX).sum())
        return float(training_flops(config, tokens=tokens, head_rows=0) * rows
                     + training_flops(config, tokens=0, head_rows=labelled))
    return float(rows * training_flops(config, tokens=tokens))


def device_name(device: torch.device) -> str:
    """The GPU's name, else the CPU model from /proc/cpuinfo (what a measured figure is named by)."""
    if device.type == "cuda":
        return torch.cuda.getdevice_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def measure_peak_flops(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """FLOP/s of the best of a few n x n matmuls in ``dtype`` on ``device``."""
    n = n or PROBE_SIZE.get(device.type, 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up: kernel selection, allocation
    best = float("inf")
    for _ in range(PROBE_REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_flops(device: torch.device, precision: str) -> float:
    """The best probe of this machine in ``precision`` ("fp32" | "bf16") so far: each run probes
    again (under a second) and the cache keeps the highest value, because a probe taken while other
    processes share the cores reads low (4-5x, measured) and would make MFU read high ever after.
    A cache that cannot be written (read-only home) only costs the probe."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    key = f"{device.type}|{device_name(device)}|{precision}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    path = cache_dir() / "peak_flops.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    best = cached.get(key) if isinstance(cached.get(key), (int, float)) and cached[key] > 0 else 0.0
    value = measure_peak_flops(device, dtype)
    if value <= best:
        return float(best)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**cached, key: value})
    except OSError as e:
        print(f"note: could not cache the peak FLOP/s probe in {path} ({e.strerror})", file=sys.stderr)
    return value


def max_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024
