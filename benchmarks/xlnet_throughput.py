"""XLNet throughput: lmzoo vs transformers, same weights, same batches, one run.

    .venv/bin/python benchmarks/xlnet_throughput.py [--steps 5] [--batch 32] [--seq 128] [--predict 20]
                                                     [--new-tokens 100] [--skip-train] [--skip-generate]

1. PLM training (forward + backward + fused AdamW) of XLNet L4 d256 h4 (vocab 32000) on PLMCollator
   batches with ``num_predict`` rows, fp32 and bf16 autocast: tokens/s (batch * seq per step), the
   two sides timed in alternation, best of 3 rounds of --steps steps each.
2. Greedy generation, batch 1: transformers' ``generate`` (its mems path) against lmzoo's
   ``generation_step`` loop (lmzoo.generate when it exists): new tokens/s, and the tokens must agree.
Timings on a shared machine are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import transformers

import lmzoo
from lmzoo.objectives.plm import PLMCollator
from timing import interleaved_seconds, sync, trainer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def timed(fn, n: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(DEVICE)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(DEVICE)
    return (time.perf_counter() - start) / n


def models(folder: str, hf_config: transformers.XLNetConfig):
    torch.manual_seed(0)
    hf = transformers.XLNetLMHeadModel(hf_config)
    hf.save_pretrained(folder)
    return lmzoo.from_pretrained(folder).to(DEVICE), hf.to(DEVICE)


def bench_train(args) -> None:
    config = transformers.XLNetConfig(vocab_size=32000, d_model=256, n_layer=4, n_head=4, d_inner=1024, mem_len=None)
    with tempfile.TemporaryDirectory() as folder:
        ours, hf = models(folder, config)
    g = torch.Generator().manual_seed(0)
    examples = [{"input_ids": torch.randint(6, 32000, (args.seq,), generator=g)} for _ in range(args.batch)]
    batch = PLMCollator(pad_id=5, num_predict=args.predict)(examples, g)
    batch = {k: v.to(DEVICE) for k, v in batch.items()}
    del batch["attention_mask"]  # no padding: both models skip the padding mask
    tokens = args.batch * args.seq
    print(f"PLM training, L4 d256 h4, batch {args.batch} x seq {args.seq}, {args.predict} predicted, {DEVICE}")
    for precision in ("fp32", "bf16"):
        t_ours, t_hf = interleaved_seconds(trainer(ours, batch, precision, DEVICE),
                                           trainer(hf, {**batch, "use_mems": False}, precision, DEVICE),
                                           args.steps, device=DEVICE)
        print(f"  {precision}: lmzoo {tokens / t_ours:9.0f} tok/s   transformers {tokens / t_hf:9.0f} tok/s   "
              f"ratio {t_hf / t_ours:.2f}x")


def lmzoo_greedy(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The new tokens only [B, new_tokens] (lmzoo.generate's convention), without the prompt."""
    try:
        from lmzoo.generate import generate  # the shared module, once it exists
    except ImportError:
        generate = None
    if generate is not None:
        return generate(model, prompt, max_new_tokens=new_tokens)
    state = model.prepare_generation(prompt, None, new_tokens)
    out, new = prompt, prompt
    for _ in range(new_tokens):
        new = model.generation_step(new, state).argmax(-1, keepdim=True)
        out = torch.cat([out, new], 1)
    return out[:, prompt.shape[1]:]


def bench_generate(args) -> None:
    config = transformers.XLNetConfig(vocab_size=32000, d_model=256, n_layer=4, n_head=4, d_inner=1024, mem_len=None,
                                      pad_token_id=5, eos_token_id=None, initializer_range=0.1)
    with tempfile.TemporaryDirectory() as folder:
        ours, hf = models(folder, config)
    ours.eval(), hf.eval()
    prompt = torch.randint(6, 32000, (1, 16), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    n = args.new_tokens
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=5)
        mine = lmzoo_greedy(ours, prompt, n)
        t_hf = timed(lambda: hf.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=5), 2, warmup=1)
        t_ours = timed(lambda: lmzoo_greedy(ours, prompt, n), 2, warmup=1)
    # transformers returns prompt + new tokens, lmzoo the new tokens: compare the new ones
    ref_new = ref[0, prompt.shape[1]:]
    k = min(ref_new.shape[0], mine.shape[1])
    same = int((ref_new[:k] == mine[0, :k]).long().cumprod(0).sum())
    print(f"greedy generation, batch 1, prompt 16, {n} new tokens, {DEVICE}: lmzoo {n / t_ours:7.1f} tok/s   "
          f"transformers {n / t_hf:7.1f} tok/s   ratio {t_hf / t_ours:.2f}x   ({same}/{n} tokens equal)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed round (best of 3 rounds)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--predict", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-generate", action="store_true")
    args = parser.parse_args()
    if not args.skip_train:
        bench_train(args)
    if not args.skip_generate:
        bench_generate(args)


if __name__ == "__main__":
    main()
