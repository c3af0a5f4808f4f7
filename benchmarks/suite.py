"""Speed at real sizes: each family's base preset, lmzoo and transformers on the same weights and batch.

    .venv/bin/python benchmarks/suite.py [--quick] [--device cuda] [--only bert gpt2 ...] [--compile]
                                         [--precisions fp32 bf16] [--json FILE]

Training rows: bert-base (MLM + NSP, seq 128), gpt2-small (seq 512), t5-base (512 → 114, as nanoT5),
bart-base (denoising, 512 → 512), xlnet-base (permutation LM, seq 512, 1/6 predicted): tokens/s of a
step (forward, backward, fused AdamW), timed interleaved best-of-3 with transformers, and MFU = the
step's model FLOPs (``lmzoo.flops``, PaLM appendix B, the same count for both sides) over a peak this
script measures itself (a large matmul in fp32 and in bf16, printed with the table). Decoding rows:
greedy (gpt2-small) and 4-beam (t5-base, bart-base) new tokens/s. Peak memory: CUDA's max allocated
per side; on CPU the process's peak RSS after the row (both sides and everything before it).

``--quick`` (a 2-core machine): batch 1, 2 timed steps per round, smaller peak probe, 16 new tokens.
Timings on a shared machine are noisy: compare the ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from dataclasses import dataclass

import torch
import transformers

from lmzoo.flops import training_flops
from lmzoo.generate import generate
from lmzoo.models import family_spec
from lmzoo.objectives.plm import PLMCollator
from lmzoo.presets import preset_config
from timing import interleaved_seconds, sync, trainer


@dataclass(frozen=True)
class Row:
    preset: str
    tokens: int  # encoder (or only) sequence length
    targets: int = 0  # decoder length of an encoder-decoder
    batch: int = 8
    decode: str | None = None  # "greedy" or "beam"


ROWS = {
    "bert": Row("bert-base", 128, batch=32),
    "gpt2": Row("gpt2-small", 512, batch=8, decode="greedy"),
    "t5": Row("t5-base", 512, 114, batch=8, decode="beam"),
    "bart": Row("bart-base", 512, 512, batch=8, decode="beam"),
    "xlnet": Row("xlnet-base", 512, batch=4),
}
MASK_RATE, PLM_K = 0.15, 6


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def peak_flops(device: str, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` n x n matmuls: the machine's reachable peak for ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def twins(row: Row, device: str):
    """(lmzoo model, transformers model) of the row's preset with the same random weights."""
    config = preset_config(row.preset)
    spec = family_spec(config.family)
    torch.manual_seed(0)
    ours = spec.objectives[spec.default_objective](config)
    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder)
        hf_cls = getattr(transformers, ours.hf_architecture)
        try:
            hf = hf_cls.from_pretrained(folder, attn_implementation="sdpa")
        except (ValueError, ImportError):  # no SDPA in transformers for this architecture (XLNet)
            hf = hf_cls.from_pretrained(folder, attn_implementation="eager")
    return ours.to(device), hf.to(device), config


def batches(row: Row, config, batch: int, device: str) -> tuple[dict, dict, dict]:
    """(lmzoo batch, transformers batch, flops shape per sequence): the same tensors, HF's names."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (batch, row.tokens), generator=g)
    mask = torch.ones_like(ids)
    if config.is_encoder_decoder:
        labels = torch.randint(5, config.vocab_size, (batch, row.targets), generator=g)
        ours = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        shape = {"tokens": row.tokens, "targets": row.targets}
        return _to(ours, device), _to(ours, device), shape
    if config.positions == "relative_sinusoidal":  # the permutation LM's batch, 1/K of the tokens predicted
        collate = PLMCollator(pad_id=0, K=PLM_K, max_span=5, num_predict=row.tokens // PLM_K, special_ids=())
        ours = collate([{"input_ids": r} for r in ids], g)
        rows = ours["target_mapping"].shape[1]
        return _to(ours, device), _to(ours, device), {"tokens": row.tokens, "query_rows": rows, "head_rows": rows}
    if config.type_vocab_size > 1:  # BERT: MLM + NSP (RoBERTa has one segment type)
        labels = torch.where(torch.rand(ids.shape, generator=g) < MASK_RATE, ids, torch.full_like(ids, -100))
        types = torch.zeros_like(ids)
        types[:, row.tokens // 2:] = 1
        nsp = torch.randint(0, 2, (batch,), generator=g)
        ours = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}
        hf = {**ours, "next_sentence_label": nsp}
        head_rows = round(MASK_RATE * row.tokens)  # only the masked rows need the vocabulary
        return _to({**ours, "nsp_labels": nsp}, device), _to(hf, device), {"tokens": row.tokens, "head_rows": head_rows}
    ours = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    return _to(ours, device), _to(ours, device), {"tokens": row.tokens}


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_rows(name: str, row: Row, args, peaks: dict[str, float]) -> list[dict]:
    ours, hf, config = twins(row, args.device)
    batch = 1 if args.quick else row.batch
    our_batch, hf_batch, shape = batches(row, config, batch, args.device)
    flops = training_flops(config, **shape) * batch
    tokens = batch * (row.tokens + row.targets)
    out = []
    for precision in args.precisions:
        steps = [trainer(ours, our_batch, precision, args.device), trainer(hf, hf_batch, precision, args.device)]
        compile_s = [0.0, 0.0]
        if args.compile:
            for side, model in enumerate((ours, hf)):
                compiled = torch.compile(model)
                steps[side] = trainer(compiled, (our_batch, hf_batch)[side], precision, args.device)
                start = time.perf_counter()
                steps[side]()
                compile_s[side] = time.perf_counter() - start
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        a, b = interleaved_seconds(*steps, args.steps, device=args.device)
        out.append({"row": f"train {row.preset} {precision}" + (" compiled" if args.compile else ""),
                    "lmzoo_tok_s": tokens / a, "hf_tok_s": tokens / b, "ratio": b / a,
                    "lmzoo_mfu": flops / a / peaks[precision], "hf_mfu": flops / b / peaks[precision],
                    "compile_s": compile_s, "peak_mb": peak_memory_mb(args.device)})
        print_row(out[-1])
    if row.decode and "decode" not in args.skip:
        out.append(decode_row(row, ours.eval(), hf.eval(), config, args))
        print_row(out[-1])
    return out


def decode_row(row: Row, ours, hf, config, args) -> dict:
    """New tokens/s of greedy (decoder-only) or 4-beam (encoder-decoder) decoding, batch 1."""
    new = 16 if args.quick else 64
    prompt = 128
    ids = torch.randint(5, config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(1)).to(args.device)
    mask = torch.ones_like(ids)
    beams = 4 if row.decode == "beam" else 1
    hf.generation_config.eos_token_id = None  # exactly `new` tokens on both sides
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, num_beams=beams)

    def timed(fn) -> float:
        fn()
        sync(args.device)
        start = time.perf_counter()
        fn()
        sync(args.device)
        return new / (time.perf_counter() - start)

    with torch.no_grad():
        a = timed(lambda: generate(ours, ids, mask, **kwargs))
        b = timed(lambda: hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, **kwargs))
    return {"row": f"decode {row.preset} {row.decode}{' 4 beams' if beams > 1 else ''}", "lmzoo_tok_s": a,
            "hf_tok_s": b, "ratio": a / b, "peak_mb": peak_memory_mb(args.device)}


def print_row(r: dict) -> None:
    mfu = f"{r['lmzoo_mfu']:>8.1%}{r['hf_mfu']:>8.1%}" if "lmzoo_mfu" in r else f"{'':>16}"
    compiled = f"  compile {r['compile_s'][0]:.0f}s / {r['compile_s'][1]:.0f}s" if any(r.get("compile_s", ())) else ""
    print(f"{r['row']:<34}{r['lmzoo_tok_s']:>12,.0f}{r['hf_tok_s']:>12,.0f}{r['ratio']:>7.2f}x{mfu}"
          f"{r['peak_mb']:>10,.0f}{compiled}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="batch 1, 2 timed steps per round, 16 new tokens")
    p.add_argument("--only", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile both sides (compile time reported)")
    p.add_argument("--skip", nargs="*", default=[], choices=["decode"])
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 4; --quick 2)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    args.steps = args.steps or (2 if args.quick else 4)
    transformers.utils.logging.disable_progress_bar()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: TF32 would be a different peak
    n = 2048 if args.quick else 4096
    peaks = {"fp32": peak_flops(args.device, torch.float32, n), "bf16": peak_flops(args.device, torch.bfloat16, n)}
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"{machine}; torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"measured matmul peak ({n}x{n}): fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.2f} "
          f"TFLOP/s{' (quick)' if args.quick else ''}")
    print(f"{'row':<34}{'lmzoo tok/s':>12}{'HF tok/s':>12}{'ratio':>8}{'MFU':>8}{'HF MFU':>8}{'peak MB':>10}")
    rows = []
    for name in args.only:
        rows += train_rows(name, ROWS[name], args, peaks)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "peaks": peaks, "quick": args.quick, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
