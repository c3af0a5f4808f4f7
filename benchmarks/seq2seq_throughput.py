"""T5 / BART throughput, lmzoo side by side with transformers on the same weights, in one run.

Training: tokens/s (source + target) of forward + backward + AdamW step, d_model 256, 4+4 layers,
source 256, target 64, batch 16, fp32 and bf16 autocast, with the families' dropout (``--no-dropout``:
none). Generation: T5-small config, 4 beams, exactly 64 new tokens (eos held back by min_new_tokens on
both sides), batch 1 and 8, source 128. Both sides train with fused AdamW (lmzoo's loop; HF Trainer's
default on torch >= 2.8).

    python benchmarks/seq2seq_throughput.py [--device cuda] [--steps 4] [--only train|generate] [--no-dropout]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import transformers

from lmzoo.generate import generate
from lmzoo.models.bart import BartForConditionalGeneration
from lmzoo.models.t5 import T5ForConditionalGeneration
from lmzoo.presets import preset_config
from timing import interleaved_seconds, sync, trainer


def hf_twin(ours, hf_cls):
    """The same weights in transformers, through lmzoo's own saver."""
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        return hf_cls.from_pretrained(d, attn_implementation="sdpa").to(next(ours.parameters()).device)


def generation_tokens_per_s(fn, n_new, batch_size, device, repeats=3):
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return repeats * n_new * batch_size / (time.perf_counter() - start)


def beam_search_row(device: str, g: torch.Generator, batch: int) -> tuple[str, float, float]:
    """T5-small, source 128, 4 beams, exactly 64 new tokens on both sides (eos held back)."""
    ours = T5ForConditionalGeneration(preset_config("t5-small", dropout=0.0)).to(device).eval()
    hf = hf_twin(ours, transformers.T5ForConditionalGeneration).eval()
    src = torch.randint(3, 32000, (batch, 128), generator=g).to(device)
    mask = torch.ones_like(src)
    with torch.no_grad():
        a = generation_tokens_per_s(lambda: generate(ours, src, mask, max_new_tokens=64, min_new_tokens=64,
                                                     num_beams=4), 64, batch, device)
        b = generation_tokens_per_s(lambda: hf.generate(input_ids=src, attention_mask=mask, max_new_tokens=64,
                                                        min_new_tokens=64, num_beams=4, do_sample=False),
                                    64, batch, device)
    return f"T5-small beam 4, batch {batch}", a, b


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=4, help="training steps per timed round (3 rounds)")
    p.add_argument("--only", choices=["train", "generate"], help="run one half of the benchmark")
    p.add_argument("--no-dropout", action="store_true",
                   help="train without dropout (default: the families' own, as HF's configs: T5 0.1 on hidden states "
                        "and attention, BART 0.1 on hidden states)")
    args = p.parse_args()
    device = args.device
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, preset, cls, hf_cls in (
        ("T5", "t5-tiny", T5ForConditionalGeneration, transformers.T5ForConditionalGeneration),
        ("BART", "bart-tiny", BartForConditionalGeneration, transformers.BartForConditionalGeneration),
    ) if args.only != "generate" else ():
        kw = dict(d_model=256, n_layers=4, n_decoder_layers=4, n_heads=4, d_ff=1024, vocab_size=32128)
        if args.no_dropout:
            kw.update(dropout=0.0, attention_dropout=0.0)
        if name == "T5":
            kw["d_head"] = 64
        ours = cls(preset_config(preset, **kw)).to(device)
        hf = hf_twin(ours, hf_cls)
        batch = {"input_ids": torch.randint(3, 32000, (16, 256), generator=g).to(device),
                 "labels": torch.randint(3, 32000, (16, 64), generator=g).to(device)}
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        n_tokens = batch["input_ids"].numel() + batch["labels"].numel()
        for precision in ("fp32", "bf16"):
            a, b = interleaved_seconds(trainer(ours, batch, precision, device), trainer(hf, batch, precision, device),
                                       args.steps, device=device)
            a, b = n_tokens / a, n_tokens / b
            rows.append((f"train {name} {precision}", a, b))
        del ours, hf

    if args.only != "train":
        rows.extend(beam_search_row(device, g, batch) for batch in (1, 8))

    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; training dropout: "
          f"{'none' if args.no_dropout else 'T5 0.1 + attention 0.1, BART 0.1'}")
    print(f"{'benchmark':<28}{'lmzoo tok/s':>14}{'transformers':>14}{'ratio':>8}")
    for label, a, b in rows:
        print(f"{label:<28}{a:>14.0f}{b:>14.0f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
