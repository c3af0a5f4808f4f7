"""Fine-tune a small T5 to write a docstring's summary line from its body; report ROUGE.

The data is the summarization probe's (``lmzoo.probes.summarization_data``): PEP 257 docstrings of
this interpreter's standard library (``*.py`` outside test folders), the body's prose paragraphs as
the source and the summary line as the target, 300 held out. English prose written by people, read
at run time from the running interpreter, never copied into the repository. Here at a larger budget
than the probe's 400 steps, beside the lead-sentence baseline:

    OMP_NUM_THREADS=2 python examples/summarize_docstrings.py                  # t5-tiny from scratch
    python examples/summarize_docstrings.py --model runs/compare/span           # a pretrained T5 / BART folder
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from lmzoo.io import atomic_write_json, atomic_write_text
from lmzoo.models.t5 import T5ForConditionalGeneration
from lmzoo.presets import preset_config
from lmzoo.probes import clip_to_tokens, first_sentence, rouge_scores, summarization_data
from lmzoo.tasks.seq2seq import Seq2SeqOptions, finetune_seq2seq, generate_texts, load_seq2seq_model
from lmzoo.tokenizer import Tokenizer, train_tokenizer
from lmzoo.train.loop import TrainConfig


def write_pairs(path: Path, rows: list[tuple[str, str]]) -> Path:
    atomic_write_text(path, "".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in rows))
    return path


def scratch_model(folder: Path, train: list[tuple[str, str]], preset: str, vocab_size: int) -> Path:
    """A randomly initialised ``preset`` with a Unigram tokenizer trained on the training pairs."""
    text = folder / "train.txt"
    atomic_write_text(text, "\n\n".join(f"{s}\n{t}" for s, t in train))
    tokenizer = train_tokenizer([str(text)], kind="unigram", vocab_size=vocab_size, out_dir=str(folder))
    torch.manual_seed(0)
    T5ForConditionalGeneration(preset_config(preset, vocab_size=tokenizer.vocab_size)).save_pretrained(folder)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a T5 / BART folder to fine-tune (default: --preset from scratch)")
    p.add_argument("--preset", default="t5-tiny")
    p.add_argument("--vocab-size", type=int, default=4000)
    p.add_argument("--out", default="runs/examples/docstrings")
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dev-size", type=int, default=100, help="training pairs held out to pick the checkpoint")
    args = p.parse_args()

    out = Path(args.out)
    train, test = summarization_data()
    random.Random(1).shuffle(train)
    dev, train = train[:args.dev_size], train[args.dev_size:]
    data = out / "data"
    paths = {name: write_pairs(data / f"{name}.jsonl", rows) for name, rows in
             (("train", train), ("dev", dev), ("test", test))}
    print(f"{len(train)} train, {len(dev)} dev, {len(test)} test docstrings")
    model = Path(args.model) if args.model else scratch_model(out / "init", train, args.preset, args.vocab_size)

    config = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=args.max_steps // 20, eval_every=max(1, args.max_steps // 5), log_every=50)
    options = Seq2SeqOptions(max_source_length=192, max_target_length=48, metric="rougeL")
    sources = [s for s, _ in test]
    tokenizer = Tokenizer.load(model)
    write_pairs(paths["train"], [(clip_to_tokens(tokenizer, s, 192), t) for s, t in train])
    write_pairs(paths["dev"], [(clip_to_tokens(tokenizer, s, 192), t) for s, t in dev])
    result, best = finetune_seq2seq(model=str(model), train_path=str(paths["train"]), eval_path=str(paths["dev"]),
                                    out=out / "run", train_config=config, options=options, overwrite=True)
    net, tokenizer = load_seq2seq_model(str(out / "run" / "best"))
    predictions = generate_texts(net, tokenizer, [clip_to_tokens(tokenizer, s, 192) for s in sources], max_new_tokens=48)
    references = [t for _, t in test]
    scores = {"lead sentence": rouge_scores([first_sentence(s) for s in sources], references),
              f"{args.model or args.preset + ' from scratch'} (step {best.get('step')})":
                  rouge_scores(predictions, references)}
    atomic_write_json(out / "test_metrics.json", {"n_test": len(test), "train_loss": result.train_loss,
                                                  "dev_best": best, "test": scores})
    print(f"\nheld-out test ({len(test)} docstrings)\n\n| summary | ROUGE-1 | ROUGE-2 | ROUGE-L |\n|---|---|---|---|")
    for name, s in scores.items():
        print(f"| {name} | {s['rouge1']:.2f} | {s['rouge2']:.2f} | {s['rougeL']:.2f} |")
    for source, reference, prediction in list(zip(sources, references, predictions))[:5]:
        print(f"\nbody: {source[:160]}...\nsummary:   {reference}\npredicted: {prediction}")


if __name__ == "__main__":
    main()
