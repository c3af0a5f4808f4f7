"""Fine-tune a small T5 to translate Django's English interface strings into German; report BLEU.

Django's wheel carries ~800 English→German messages (``django/**/locale/de/LC_MESSAGES/*.mo``),
read here with the stdlib ``gettext`` from an installed Django or straight from a wheel file
(a message with a gettext context keeps it as ``context\\x04message``):

    pip download django --no-deps -d wheels/
    python examples/translate_django_de.py --wheel wheels/django-*.whl

Steps: pairs → 85/5/10 train/dev/test split → a Unigram tokenizer trained on the training pairs
(both sides) → a randomly initialised T5 preset → ``finetune_seq2seq`` (the code behind ``lmzoo
finetune --task seq2seq``; the checkpoint with the best dev BLEU is kept) → BLEU / chrF / ROUGE-L
on the held-out test messages, next to two baselines scored the same way: copying the English
source, and the German of the training message whose English is closest by characters (difflib).
The defaults take about 10 CPU-minutes on one thread; README.md lists the measured table.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import random
import zipfile
from pathlib import Path

import torch

from lmzoo.errors import UserError
from lmzoo.io import atomic_write_json, atomic_write_text
from lmzoo.models.t5 import T5ForConditionalGeneration
from lmzoo.presets import preset_config
from lmzoo.probes import django_messages
from lmzoo.tasks.seq2seq import Seq2SeqOptions, finetune_seq2seq, generate_texts, load_seq2seq_model, text_metrics
from lmzoo.tokenizer import train_tokenizer
from lmzoo.train.loop import TrainConfig


def django_pairs(wheel: str | None) -> list[tuple[str, str]]:
    """(English, German) singular messages of every Django catalog, deduplicated, in a fixed order."""
    blobs: list[bytes] = []
    if wheel:
        with zipfile.ZipFile(wheel) as z:
            blobs = [z.read(n) for n in sorted(z.namelist()) if "/locale/de/LC_MESSAGES/" in n and n.endswith(".mo")]
    else:
        spec = importlib.util.find_spec("django")
        if spec is None:
            raise UserError("Django is not installed: pass --wheel path/to/django-*.whl")
        root = Path(spec.submodule_search_locations[0])
        blobs = [p.read_bytes() for p in sorted(root.glob("**/locale/de/LC_MESSAGES/*.mo"))]
    return django_messages(blobs)  # the translation probe's reader (lmzoo.probes)


def write_pairs(path: Path, rows: list[tuple[str, str]]) -> None:
    atomic_write_text(path, "".join(json.dumps({"source": s, "target": t}, ensure_ascii=False) + "\n" for s, t in rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", help="a django-*.whl (default: the installed Django)")
    p.add_argument("--out", default="runs/examples/django-de")
    p.add_argument("--preset", default="t5-tiny")
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--evals", type=int, default=6, help="dev evaluations (checkpoints) during training")
    args = p.parse_args()

    out = Path(args.out)
    pairs = django_pairs(args.wheel)
    random.Random(0).shuffle(pairs)
    n_test, n_dev = max(20, len(pairs) // 10), max(10, len(pairs) // 20)
    test, dev, train = pairs[:n_test], pairs[n_test:n_test + n_dev], pairs[n_test + n_dev:]
    data = out / "data"
    for name, rows in (("train", train), ("dev", dev), ("test", test)):
        write_pairs(data / f"{name}.jsonl", rows)
    atomic_write_text(data / "train.txt", "\n\n".join(f"{s}\n{t}" for s, t in train))
    print(f"{len(pairs)} messages: {len(train)} train, {len(dev)} dev, {len(test)} test")

    model_dir = out / "init"
    tokenizer = train_tokenizer([str(data / "train.txt")], kind="unigram", vocab_size=args.vocab_size,
                                out_dir=str(model_dir))
    torch.manual_seed(0)  # the initial weights; the loop seeds everything after
    config = preset_config(args.preset, vocab_size=tokenizer.vocab_size, dropout=args.dropout)
    T5ForConditionalGeneration(config).save_pretrained(model_dir)

    train_config = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                               warmup_steps=min(200, args.max_steps // 10),
                               eval_every=max(1, args.max_steps // max(1, args.evals)))
    # No "translate English to German: " prefix: it names the task for a pretrained T5; from scratch it only costs time.
    options = Seq2SeqOptions(label_smoothing=args.label_smoothing, max_source_length=256, max_target_length=96)
    result, best = finetune_seq2seq(model=str(model_dir), train_path=str(data / "train.jsonl"),
                                    eval_path=str(data / "dev.jsonl"), out=out / "run", train_config=train_config,
                                    options=options, overwrite=True)

    model, tokenizer = load_seq2seq_model(str(out / "run" / "best"))
    sources, references = [s for s, _ in test], [t for _, t in test]
    german = dict(train)
    outputs = {
        "copy English source": [s.rpartition("\x04")[2] for s in sources],  # the message without its context
        "nearest training pair": [german[difflib.get_close_matches(s, german, n=1, cutoff=0)[0]] for s in sources],
        f"{args.preset} (step {best.get('step')})": generate_texts(model, tokenizer, sources, max_new_tokens=96),
    }
    scores = {name: text_metrics(texts, references) for name, texts in outputs.items()}
    atomic_write_json(out / "test_metrics.json", {"n_test": len(test), "train_loss": result.train_loss,
                                                  "dev_best": best, "test": scores})

    print(f"\ntrain loss {result.train_loss:.3f}; best dev BLEU {best.get('bleu', 0):.2f} at step {best.get('step')}")
    print(f"\nheld-out test ({len(test)} messages)    BLEU   chrF  ROUGE-L")
    for name, s in scores.items():
        print(f"{name:<30} {s['bleu']:6.2f} {s['chrf']:6.2f} {s['rougeL']:8.2f}")
    print()
    model_outputs = list(outputs.values())[-1]
    for s, r, o in list(zip(sources, references, model_outputs))[:8]:
        print(f"EN  {s!r}\nDE  {r!r}\nT5  {o!r}\n")


if __name__ == "__main__":
    main()
