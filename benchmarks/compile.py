"""torch.compile for every family: graphs and breaks, compile time, and eager vs compiled speed.

    .venv/bin/python benchmarks/compile.py [--only bert gpt2 ...] [--steps N] [--precisions fp32 bf16]

Training rows (each family's default pretraining model at a small preset, the batch of
``benchmarks/suite.py``): graphs and graph breaks of the forward (``torch._dynamo.explain``; the
loss runs eagerly by design, see ``lmzoo.nn.loss``), the first compiled step's seconds (the
compile), and tokens/s of a training step (forward, backward, fused AdamW) eager and compiled, timed
interleaved best-of-3. Decoding rows: greedy (GPT-2, XLNet) and 4-beam (T5, BART) new tokens/s of
``lmzoo.generate.generate`` eager and after ``compile_decoding``, with the tokens checked equal.
Timings on a shared machine are noisy: compare the ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch._dynamo

from lmzoo.generate import compile_decoding, generate
from lmzoo.models import family_spec
from lmzoo.presets import preset_config
from suite import Row, batches, cpu_name
from timing import interleaved_seconds, trainer

TRAIN = {
    "bert": Row("bert-mini", 128, batch=8),
    "roberta": Row("roberta-tiny", 128, batch=8),
    "gpt2": Row("gpt-mini", 256, batch=4),
    "t5": Row("t5-tiny", 256, 64, batch=4),
    "bart": Row("bart-tiny", 256, 64, batch=4),
    "xlnet": Row("xlnet-tiny", 256, batch=4),
}
DECODE = {"gpt2": ("gpt-mini", 1), "t5": ("t5-tiny", 4), "bart": ("bart-tiny", 4), "xlnet": ("xlnet-tiny", 1)}
VOCAB = 8000


def model_for(preset: str):
    config = preset_config(preset, vocab_size=VOCAB)
    spec = family_spec(config.family)
    torch.manual_seed(0)
    return spec.objectives[spec.default_objective](config), config


def train_row(row: Row, precision: str, steps: int) -> dict:
    model, config = model_for(row.preset)
    batch, _, _ = batches(row, config, row.batch, "cpu")
    model.train()
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        explained = torch._dynamo.explain(model)(**batch)
    torch._dynamo.reset()
    eager = trainer(model, batch, precision)
    compiled = trainer(torch.compile(model), batch, precision)
    start = time.perf_counter()
    compiled()
    compile_s = time.perf_counter() - start
    eager_s, compiled_s = interleaved_seconds(eager, compiled, steps)
    tokens = row.batch * (row.tokens + row.targets)
    return {"row": f"train {row.preset} {precision}", "graphs": explained.graph_count,
            "breaks": explained.graph_break_count, "compile_s": compile_s,
            "eager": tokens / eager_s, "compiled": tokens / compiled_s}


def decode_row(preset: str, beams: int, new_tokens: int) -> dict:
    model, _ = model_for(preset)
    model.eval()
    ids = torch.randint(5, VOCAB, (1, 32), generator=torch.Generator().manual_seed(0))
    options = dict(max_new_tokens=new_tokens, num_beams=beams, eos_token_id=-1)  # never stop early

    def timed() -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        out = generate(model, ids, **options)
        return out, time.perf_counter() - start

    generate(model, ids, **options)
    eager_out, _ = timed()
    eager_s = min(timed()[1] for _ in range(3))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # the graphs of this row only
    compile_decoding(model)
    start = time.perf_counter()
    compiled_out = generate(model, ids, **options)
    compile_s = time.perf_counter() - start
    compiled_s = min(timed()[1] for _ in range(3))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return {"row": f"{'greedy' if beams == 1 else f'beam {beams}'} {preset}", "graphs": graphs, "breaks": None,
            "compile_s": compile_s, "eager": new_tokens / eager_s, "compiled": new_tokens / compiled_s,
            "equal": torch.equal(eager_out, compiled_out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=sorted(TRAIN), default=sorted(TRAIN))
    p.add_argument("--precisions", nargs="*", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                   help="training rows to run (none: decoding rows only)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--new-tokens", type=int, default=32)
    args = p.parse_args()
    torch.set_float32_matmul_precision("highest")
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print(f"{'row':<28}{'graphs':>7}{'breaks':>7}{'compile s':>10}{'eager tok/s':>13}{'compiled':>10}{'ratio':>7}")
    for name in args.only:
        rows = [train_row(TRAIN[name], precision, args.steps) for precision in args.precisions]
        if name in DECODE:
            rows.append(decode_row(*DECODE[name], args.new_tokens))
        for r in rows:
            breaks = "–" if r["breaks"] is None else r["breaks"]
            same = "" if r.get("equal", True) else "  TOKENS DIFFER"
            print(f"{r['row']:<28}{r['graphs']:>7}{breaks:>7}{r['compile_s']:>10.1f}{r['eager']:>13,.0f}"
                  f"{r['compiled']:>10,.0f}{r['compiled'] / r['eager']:>6.2f}×{same}", flush=True)
    torch._dynamo.reset()


if __name__ == "__main__":
    main()
