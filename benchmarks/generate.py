"""Greedy generation speed: lmzoo vs transformers, GPT-2 124M config, random weights, one run.

    .venv/bin/python benchmarks/generate.py [--prompt 32] [--new 128] [--repeats 1]

Batch 1, a 32-token prompt, 128 greedy new tokens (no eos), fp32 and bf16 weights. Prints new
tokens/s of each and the ratio lmzoo / transformers, and checks both produced the same tokens: fp32
must agree; in bf16 the two sides' GEMMs round differently (last-position logits differ by up to
0.03 against a spread of 0.55), and random weights' near-flat logits then flip the argmax after a
few tokens (10 of 32 equal, measured), so False is expected there. Then
lmzoo with int8 weight-only quantization (``lmzoo.quantize``, bf16 activations) against both
transformers rows: its tokens differ (random weights give near-flat logits, so quantization noise
flips the argmax; tests/test_quantize.py checks a trained model keeps its greedy output).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import transformers

import lmzoo
from lmzoo.generate import generate
from lmzoo.quantize import quantize_int8


def best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = transformers.GPT2Config(attn_implementation="sdpa")  # 124M: L12 d768 h12, vocab 50257
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    hf_model.generation_config.eos_token_id = None  # exactly --new tokens on both sides, no extra processor
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        ours = lmzoo.from_pretrained(folder).eval()
    ids = torch.randint(0, config.vocab_size - 1, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    print(f"GPT-2 124M (random weights), batch 1, prompt {args.prompt}, {args.new} greedy new tokens, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'weights':<8}{'transformers tok/s':>20}{'lmzoo tok/s':>14}{'ratio':>8}{'same tokens':>13}")
    hf_speed = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        hf_model.to(dtype)
        ours.to(dtype)

        def run_hf():
            with torch.no_grad():
                out = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=args.new, pad_token_id=0)
            return out[:, args.prompt:]

        def run_ours():
            return generate(ours, ids, max_new_tokens=args.new, eos_token_id=())

        hf_s, hf_out = best_time(run_hf, args.repeats)
        our_s, our_out = best_time(run_ours, args.repeats)
        same = hf_out.shape == our_out.shape and bool((hf_out == our_out).all())
        hf_speed[name] = args.new / hf_s
        print(f"{name:<8}{args.new / hf_s:>20,.1f}{args.new / our_s:>14,.1f}{hf_s / our_s:>7.2f}x{str(same):>13}")

    quantize_int8(ours)
    our_s, _ = best_time(lambda: generate(ours, ids, max_new_tokens=args.new, eos_token_id=()), args.repeats)
    for name in ("fp32", "bf16"):
        label = f"int8 (lmzoo) vs {name} (transformers)"
        print(f"{label:<36}{hf_speed[name]:>10,.1f}{args.new / our_s:>10,.1f}{args.new / our_s / hf_speed[name]:>7.2f}x")


if __name__ == "__main__":
    main()
