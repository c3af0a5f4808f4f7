"""Fine-tune a small T5 to translate Django's English interface strings into German; report BLEU.

Django's wheel carries ~800 English→German messages (``django/**/locale/de/LC_MESSAGES/*.mo``),
read here with the stdlib ``gettext`` from an installed Django or straight from a wheel file:

    pip download django --no-deps -d wheels/
    python examples/translate_django_de.py --wheel wheels/django-*.whl --out runs/django-de

Steps: pairs → 90/10 split → a Unigram tokenizer with 100 T5 sentinels trained on both sides →
a randomly initialised T5 preset → ``finetune_seq2seq`` (the code behind ``lmzoo finetune --task
seq2seq``) → BLEU / chrF / ROUGE-L of the best checkpoint on the held-out messages.
"""

from __future__ import annotations

import argparse
import gettext
import importlib.util
import io
import json
import random
import zipfile
from pathlib import Path

from lmzoo.errors import UserError
from lmzoo.models.t5 import T5ForConditionalGeneration
from lmzoo.presets import preset_config
from lmzoo.tasks.seq2seq import Seq2SeqOptions, finetune_seq2seq
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
    pairs: dict[str, str] = {}
    for blob in blobs:
        for source, target in gettext.GNUTranslations(io.BytesIO(blob))._catalog.items():
            if isinstance(source, str) and source.strip() and target.strip():  # tuples are plural forms
                pairs.setdefault(source.strip(), target.strip())
    if not pairs:
        raise UserError("no German messages found")
    return sorted(pairs.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", help="a django-*.whl (default: the installed Django)")
    p.add_argument("--out", default="runs/django-de")
    p.add_argument("--preset", default="t5-tiny")
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()

    out = Path(args.out)
    pairs = django_pairs(args.wheel)
    random.Random(0).shuffle(pairs)
    n_eval = max(20, len(pairs) // 10)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", pairs[n_eval:]), ("eval", pairs[:n_eval])):
        (data / f"{name}.jsonl").write_text(
            "".join(json.dumps({"source": s, "target": t}, ensure_ascii=False) + "\n" for s, t in rows))
    (data / "both.txt").write_text("\n\n".join(f"{s}\n{t}" for s, t in pairs), encoding="utf-8")
    print(f"{len(pairs)} messages: {len(pairs) - n_eval} to train, {n_eval} held out")

    model_dir = out / "init"
    tokenizer = train_tokenizer([str(data / "both.txt")], kind="unigram", vocab_size=4000, out_dir=str(model_dir),
                                extra_ids=100)
    T5ForConditionalGeneration(preset_config(args.preset, vocab_size=tokenizer.vocab_size)).save_pretrained(model_dir)

    config = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=min(200, args.max_steps // 10), save_every=max(1, args.max_steps // 5))
    options = Seq2SeqOptions(prefix="translate English to German: ", max_source_length=256,
                             max_target_length=96, metric="bleu")
    result, best = finetune_seq2seq(model=str(model_dir), train_path=str(data / "train.jsonl"),
                                    eval_path=str(data / "eval.jsonl"), out=out / "run", train_config=config,
                                    options=options, overwrite=True)
    print(f"train loss {result.train_loss:.3f}; held-out BLEU {best.get('bleu', 0):.2f}, chrF {best.get('chrf', 0):.2f}, "
          f"ROUGE-L {best.get('rougeL', 0):.2f} (best at step {best.get('step')}); model in {out / 'run' / 'best'}")


if __name__ == "__main__":
    main()
